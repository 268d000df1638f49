"""`install.py` as ComfyUI-Manager runs it (no `launch` module) and as AUTOMATIC1111 (and, with `FORGE_PATH`,
Forge) runs it (with `launch`): it installs only what is missing, and never torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.a1111_server import webui_host

REPO = Path(__file__).resolve().parents[1]
HOSTS = ("A1111", "FORGE")  # as in test_a1111_server.py: A1111_PATH, A1111_PYTHON, FORGE_PATH, ...

PIP_STUB = """import json, os, sys
with open(os.environ["PERFUSION_TEST_CALLS"], "a") as f:
    f.write(json.dumps({"pip": sys.argv[1:]}) + "\\n")
"""
LAUNCH_STUB = """import json, os
def run_pip(command, desc=None, live=False):
    with open(os.environ["PERFUSION_TEST_CALLS"], "a") as f:
        f.write(json.dumps({"run_pip": command}) + "\\n")
"""


def _extension(tmp_path: Path, requirements: str) -> Path:
    extension = tmp_path / "extension"
    extension.mkdir()
    shutil.copy(REPO / "install.py", extension / "install.py")
    (extension / "requirements.txt").write_text(requirements)
    return extension


def _run(tmp_path: Path, requirements: str, with_launch: bool) -> list[dict]:
    """Run install.py with stub `pip` (and `launch`) modules that only record how they were called."""
    extension = _extension(tmp_path, requirements)
    stubs = tmp_path / "stubs"
    (stubs / "pip").mkdir(parents=True)
    (stubs / "pip" / "__init__.py").write_text("")
    (stubs / "pip" / "__main__.py").write_text(PIP_STUB)
    if with_launch:
        (stubs / "launch.py").write_text(LAUNCH_STUB)
    calls = tmp_path / "calls.jsonl"
    calls.touch()
    env = {**os.environ, "PYTHONPATH": str(stubs), "PERFUSION_TEST_CALLS": str(calls)}
    subprocess.run([sys.executable, str(extension / "install.py")], cwd=extension, env=env, check=True)
    return [json.loads(line) for line in calls.read_text().splitlines() if line.strip()]


PRESENT = "# run time\ntorch\nsafetensors>=0.4\nnumpy  # any\n"
MISSING = PRESENT + "perfusion-test-surely-missing==1.0 ; python_version > '3'\n"


@pytest.mark.parametrize("with_launch", [False, True], ids=["comfyui-manager", "a1111-launch"])
def test_installs_nothing_when_everything_is_present(tmp_path, with_launch):
    assert _run(tmp_path, PRESENT, with_launch) == []


def test_without_launch_pip_gets_only_the_missing_package(tmp_path):
    assert _run(tmp_path, MISSING, with_launch=False) == [{"pip": ["install", "perfusion-test-surely-missing"]}]


def test_with_launch_run_pip_gets_only_the_missing_package(tmp_path):
    calls = _run(tmp_path, MISSING + "torch>=99\n", with_launch=True)
    assert [c["run_pip"] for c in calls] == ['install "perfusion-test-surely-missing"']


def _a1111_installer(host: tuple[str, str], extension: Path, **env: str) -> str:
    """Run `extension/install.py` through the web UI's own `launch_utils.run_extension_installer`; return its output."""
    path, python = host
    result = subprocess.run(
        [python, "-c", f"from modules import launch_utils; launch_utils.run_extension_installer({str(extension)!r})"],
        cwd=path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path, **env}, check=True,
    )
    return result.stdout + result.stderr


@pytest.mark.a1111
@pytest.mark.parametrize("prefix", HOSTS, ids=str.lower)
def test_a1111_runs_it_and_nothing_changes(request, tmp_path, prefix):
    host = webui_host(prefix)
    if not host[0]:
        pytest.skip(f"{request.node.name}: {prefix}_PATH is not set (see tests/README.md, AUTOMATIC1111)")

    def freeze() -> str:
        return subprocess.run([host[1], "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout

    before = freeze()
    assert "Error running install.py" not in (output := _a1111_installer(host, REPO)), output
    assert freeze() == before and "torch==" in before
    # a missing package goes to launch.run_pip (a no-op under --skip-install); plain pip would fail on it
    output = _a1111_installer(host, _extension(tmp_path, MISSING), COMMANDLINE_ARGS="--skip-install")
    assert "Error running install.py" not in output, output
    assert freeze() == before
