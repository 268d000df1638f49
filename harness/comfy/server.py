"""Start a headless ComfyUI with this pack linked in, and drive it through its HTTP API."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "perfusion"
TEST_PACKS = {"perfusion_test_keys": Path(__file__).resolve().with_name("keys_probe")}  # test-only nodes


@dataclass(frozen=True)
class ComfyTree:
    """One ComfyUI checkout and the Python that runs it."""

    root: Path
    python: str

    @property
    def version(self) -> str:
        match = re.search(r'__version__ = "([^"]+)"', (self.root / "comfyui_version.py").read_text())
        return match.group(1) if match else "unknown"

    def __str__(self) -> str:
        return f"comfyui-{self.version}"


def comfyui_trees() -> list[ComfyTree]:
    """The ComfyUI checkouts listed in `COMFYUI_PATH` (separated by `os.pathsep`). Each runs with the matching
    entry of `COMFYUI_PYTHON` (as many entries as trees), else its own `.venv` or `venv`, else this Python."""
    roots = [Path(p).resolve() for p in os.environ.get("COMFYUI_PATH", "").split(os.pathsep) if p]
    pythons = [p for p in os.environ.get("COMFYUI_PYTHON", "").split(os.pathsep) if p]
    if pythons and len(pythons) != len(roots):
        raise ValueError(f"COMFYUI_PYTHON lists {len(pythons)} interpreters for {len(roots)} trees in COMFYUI_PATH: "
                         "give one per tree, or none (each tree's .venv is used)")
    trees = []
    for k, root in enumerate(roots):
        own = [root / env / "bin" / "python" for env in (".venv", "venv") if (root / env / "bin" / "python").is_file()]
        trees.append(ComfyTree(root, pythons[k] if pythons else str(own[0]) if own else sys.executable))
    return trees


def comfyui_tree() -> ComfyTree | None:
    """The first tree of `COMFYUI_PATH`, for tools that run on one."""
    trees = comfyui_trees()
    return trees[0] if trees else None


def cache_dir() -> Path:
    """Checkpoints and second moments built for the tests, kept between runs, outside the repository."""
    path = Path(os.environ.get("PERFUSION_TEST_CACHE") or Path.home() / ".cache" / "perfusion-comfyui-tests")
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_checkpoint(tree: ComfyTree, sdxl: bool = False) -> Path:
    """The folder of the random-weight SD1.5-shaped checkpoint and what goes with it (`graphs.SD1_FILES`), or with
    `sdxl` also of the SDXL files (built once, with the classes of `tree`, and shared by every tree)."""
    from .graphs import SD1_FILES, SDXL_FILES

    target = cache_dir() / "models"
    builds = [(SD1_FILES, [])] + ([(SDXL_FILES, ["--sdxl"])] if sdxl else [])
    for files, flags in builds:
        if not all((target / name).is_file() for names in files.values() for name in names):
            env = {**os.environ, "PYTHONPATH": str(tree.root)}
            subprocess.run([tree.python, str(Path(__file__).with_name("build_checkpoint.py")), str(target), *flags],
                           cwd=tree.root, env=env, check=True, timeout=1200)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyError(RuntimeError):
    """A prompt that ComfyUI refused or that failed while executing."""

    def __init__(self, message: str, details: dict) -> None:
        super().__init__(message)
        self.details = details


@dataclass
class ComfyServer:
    """One ComfyUI process of `tree` on 127.0.0.1 with a throwaway base directory."""

    tree: ComfyTree
    base: Path
    port: int = field(default_factory=free_port)
    threads: int = 1
    sdxl: bool = False  # also link the full-size SDXL files (UNETLoader, DualCLIPLoader, VAELoader)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.base / "server.log"

    @property
    def perfusion_dir(self) -> Path:
        return self.base / "models" / "perfusion"

    def prepare(self) -> None:
        from .graphs import SD1_FILES, SDXL_FILES

        files = {folder: (*SD1_FILES.get(folder, ()), *(SDXL_FILES.get(folder, ()) if self.sdxl else ()))
                 for folder in {*SD1_FILES, *SDXL_FILES}}
        for sub in ("custom_nodes", "models/perfusion", "input", "output", *(f"models/{folder}" for folder in files)):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        for name, folder in {PACK_NAME: REPO, **TEST_PACKS}.items():
            link = self.base / "custom_nodes" / name
            if not link.exists():
                link.symlink_to(folder, target_is_directory=True)
        models = test_checkpoint(self.tree, self.sdxl)
        for folder, names in files.items():
            for name in names:
                _link(models / name, self.base / "models" / folder / name)

    def start(self, timeout: float = 120) -> ComfyServer:
        self.prepare()
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
               "PERFUSION_CACHE": str(cache_dir() / "second-moments")}
        script = ("import sys, torch; torch.set_num_threads(int(sys.argv[1])); sys.argv = ['main.py', *sys.argv[2:]]; "
                  "sys.path.insert(0, '.'); import runpy; runpy.run_path('main.py', run_name='__main__')")
        args = [self.tree.python, "-c", script, str(self.threads), "--cpu", "--listen", "127.0.0.1",
                "--port", str(self.port), "--base-directory", str(self.base), "--disable-auto-launch",
                "--preview-method", "none"]
        self.process = subprocess.Popen(args, cwd=self.tree.root, env=env, stdout=self.log.open("wb"),
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log.read_text()[-4000:]}")
            try:
                self.get("/system_stats")
                return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout} s:\n{self.log.read_text()[-4000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    # -- HTTP ------------------------------------------------------------------------------------------

    def request(self, path: str, body: dict | None = None, timeout: float = 60) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.read()

    def get(self, path: str):
        return json.loads(self.request(path))

    def post(self, path: str, body: dict) -> bytes:
        return self.request(path, body)

    def submit(self, graph: dict, client_id: str | None = None) -> str:
        """Queue `graph`; with `client_id` the server sends its progress and previews to that client's socket."""
        body = {"prompt": graph, **({"client_id": client_id} if client_id else {})}
        try:
            return json.loads(self.post("/prompt", body))["prompt_id"]
        except urllib.error.HTTPError as e:
            details = json.loads(e.read() or b"{}")
            raise ComfyError(f"prompt refused: {json.dumps(details)[:2000]}", details) from None

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        """The history entry of a finished prompt; raises `ComfyError` with the execution error."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                    entry["status"]["completed"] or entry["status"].get("status_str") == "error"):
                if entry["status"].get("status_str") == "error":
                    messages = dict(entry["status"].get("messages", []))
                    error = messages.get("execution_error") or messages.get("execution_interrupted") or {}
                    raise ComfyError(f"{error.get('exception_type')}: {error.get('exception_message')}", entry)
                return entry
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    def run(self, graph: dict, timeout: float = 600) -> dict:
        return self.wait(self.submit(graph), timeout)

    def images(self, entry: dict, node: str) -> list[bytes]:
        """The pixels (RGB bytes, metadata left out) of each image a SaveImage / PreviewImage node wrote."""
        from PIL import Image

        out = []
        for image in entry["outputs"][node]["images"]:
            query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
            out.append(Image.open(io.BytesIO(self.request(f"/view?{query}"))).convert("RGB").tobytes())
        return out

    def free(self) -> None:
        self.post("/free", {"unload_models": True, "free_memory": True})


@contextmanager
def running_server(tree: ComfyTree, timeout: float = 120, **options) -> Iterator[ComfyServer]:
    """A started `ComfyServer` of `tree` in a throwaway base directory, stopped (and the directory removed) after."""
    with tempfile.TemporaryDirectory(prefix="perfusion-comfyui-") as base:
        server = ComfyServer(tree, Path(base), **options).start(timeout)
        try:
            yield server
        finally:
            server.stop()


def _link(source: Path, target: Path) -> None:
    if not target.exists():
        try:
            target.symlink_to(source)
        except OSError:
            shutil.copy2(source, target)
