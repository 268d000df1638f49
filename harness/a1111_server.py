"""Start AUTOMATIC1111 (or Forge, reForge) offline on CPU in API mode with this repository as an extension, and drive
it through its HTTP API; build its test checkpoints with its own interpreter (`a1111_model.py`)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .comfy.server import free_port

REPO = Path(__file__).resolve().parents[1]
MODEL_BUILDER = Path(__file__).with_name("a1111_model.py")
PROBE = Path(__file__).with_name("a1111_probe")  # a test-only extension: what K reads, and the cards
STARTUP_SECONDS = 240
# A1111 downloads its SDXL live-preview decoder (it ships only SD1's): no live previews for the SDXL test model "xl"
OFFLINE = {"xl": {"live_previews_enable": False}}


def webui_host(prefix: str) -> tuple[str, str]:
    """The web UI's folder and interpreter from `{prefix}_PATH` and `{prefix}_PYTHON` (default: its `venv/`), or
    empty strings when not configured."""
    path = os.environ.get(f"{prefix}_PATH", "")
    return path, os.environ.get(f"{prefix}_PYTHON") or (f"{path}/venv/bin/python" if path else "")


def is_forge_backend(host: tuple[str, str]) -> bool:
    """Forge's own backend (it knows a checkpoint only by its UNet's shapes)."""
    return Path(host[0], "backend", "loader.py").is_file()


def is_reforge(host: tuple[str, str]) -> bool:
    """reForge: it loads weights with its ldm_patched (ComfyUI's detection), so it knows a checkpoint by its UNet."""
    return not is_forge_backend(host) and Path(host[0], "ldm_patched").is_dir()


def build_model(host: tuple[str, str], folder: Path, name: str, context_dim: int, seed: int,
                concepts: tuple[Path, ...] = ()) -> Path:
    """`folder/NAME.safetensors` (and its `.yaml`) built by `a1111_model.py` with the web UI's interpreter, with a
    random concept in each of `concepts`; returns the checkpoint."""
    command = [host[1], str(MODEL_BUILDER), str(folder), name, str(context_dim), str(seed)]
    for concept in concepts:
        command += ["--concept", str(concept)]
    subprocess.run(command, cwd=host[0], check=True, capture_output=True)
    return folder / f"{name}.safetensors"


@dataclass
class Server:
    """A running web UI: its data directory `root`, started on `checkpoint` (the default model of `generate`)."""

    root: Path
    port: int
    checkpoint: str
    forge: bool = False  # Forge's own backend
    reforge: bool = False
    families: tuple[str, ...] = ()  # of the test models, for the tests that name them
    probes: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def concepts(self) -> Path:
        return self.root / "models" / "perfusion"

    def call(self, path: str, body: dict | None = None, timeout: float = 600) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            body = json.load(error)
            if "message" in body:  # Forge's API-only server reports an exception's text as "message"
                body.setdefault("errors", body["message"])
            return error.code, body

    def generate(self, prompt: str, model: str = "", expect: int = 200, pnginfo: bool = False, **settings) -> dict:
        """txt2img on `model` (default: the one started with); without `pnginfo` the PNGs carry no parameters, so
        equal images are equal pixels."""
        model = model or self.checkpoint
        body = {"prompt": prompt, "steps": 4, "width": 64, "height": 64, "seed": 1, "sampler_name": "Euler",
                "override_settings": {"sd_model_checkpoint": model, "enable_pnginfo": pnginfo,
                                      **OFFLINE.get(model, {})}, **settings}
        status, result = self.call("/sdapi/v1/txt2img", body)
        assert status == expect, result
        if status == 200:
            result["infotext"] = json.loads(result["info"])["infotexts"][0]
        return result

    def keys(self, prompt: str) -> dict:
        """What the first cross-attention K projection reads ("input") and returns ("output") in the first step of
        `generate(prompt)`, saved by the test extension `a1111_probe`."""
        from safetensors.torch import load_file

        self.probes += 1
        path = self.root / f"keys-{self.probes}.safetensors"
        assert self.call("/perfusion-probe/v1/keys", {"path": str(path)})[0] == 200
        self.generate(prompt)
        return load_file(path)


@contextmanager
def running_webui(host: tuple[str, str], root: Path, checkpoint: Path, **attributes) -> Iterator[Server]:
    """The web UI of `host` started on `checkpoint` with the data directory `root` (its `extensions/` linking this
    repository, concepts in `models/perfusion`), stopped after; `attributes` go to the `Server`.

    `PERFUSION_CAPTIONS` names 64 of the shipped captions: full-size text encoders (reForge's CLIP-L, the SDXL
    models' OpenCLIP-G) take hours over all 24,000 on one CPU thread."""
    from perfusion_core.captions import load_captions

    low_bits = is_forge_backend(host) or is_reforge(host)
    (root / "models" / "perfusion").mkdir(parents=True, exist_ok=True)
    (root / "extensions").mkdir(exist_ok=True)
    for name, target in (("perfusion", REPO), ("perfusion-probe", PROBE)):
        if not (root / "extensions" / name).exists():
            (root / "extensions" / name).symlink_to(target)
    (root / "captions.txt").write_text("\n".join(load_captions()[:64]) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PERFUSION_CACHE": str(root / "cache"), "PERFUSION_CAPTIONS": str(root / "captions.txt")}
    port = free_port()
    log = open(root / "server.log", "wb")  # noqa: SIM115 (closed at teardown)
    # Forge and reForge on CPU hold UNets in fp32 (the full-size SDXL one: 10 GB, 18 GB while loading): keep fp16
    # weights
    process = subprocess.Popen(
        [host[1], "launch.py", "--skip-prepare-environment", "--nowebui", "--api", "--server-name",
         "127.0.0.1", "--port", str(port), "--data-dir", str(root), "--ckpt", str(checkpoint), "--no-half",
         "--use-cpu", "all", "--skip-torch-cuda-test", "--no-download-sd-model", "--skip-version-check",
         *(["--always-cpu", "--unet-in-fp16"] if low_bits else [])],
        cwd=host[0], env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    server = Server(root, port, checkpoint.stem, is_forge_backend(host), is_reforge(host), **attributes)
    try:
        _wait_until_up(server, process)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def _wait_until_up(server: Server, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        assert process.poll() is None, (server.root / "server.log").read_text(errors="replace")[-4000:]
        try:
            if server.call("/perfusion/v1/concepts", timeout=5)[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"the web UI did not start in time: see {server.root / 'server.log'}"
        time.sleep(1)
