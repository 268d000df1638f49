"""`pip install .`: the wheel holds perfusion_core alone, with its data and exactly its three dependencies."""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
                                     "demo_output")
CHECK = """
import importlib.metadata, importlib.util, json, sys
import perfusion_core
from perfusion_core.captions import load_captions
print(json.dumps({
    "location": perfusion_core.__file__,
    "requires": importlib.metadata.requires("perfusion"),
    "captions": len(load_captions()),
    "hosts imported": [name for name in ("diffusers", "transformers") if name in sys.modules],
    "others installed": [name for name in ("nodes", "perfusion_a1111", "toyworld", "tests")
                         if importlib.util.find_spec(name)],
}))
"""


def _run(*command, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PERFUSION_CAPTIONS")}
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=cwd, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_the_wheel_installs_perfusion_core_alone_into_a_fresh_venv(tmp_path):
    source = tmp_path / "source"  # a copy, so that building leaves nothing in the checkout
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES)
    # no build isolation: the build uses this environment's setuptools, nothing is downloaded
    _run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", tmp_path / "dist", source,
         cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("perfusion-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"perfusion_core", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "perfusion_core/data/captions.txt.gz" in names and "perfusion_core/diffusers_pipeline.py" in names

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "--no-deps", "--no-index", wheel, cwd=tmp_path)
    # the three dependencies come from this environment instead of the registry
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).strip())
    (site / "project-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    found = json.loads(_run(python, "-c", CHECK, cwd=tmp_path))
    assert Path(found["location"]).is_relative_to(site)
    assert found["requires"] == ["torch", "safetensors", "numpy"]
    assert found["captions"] == 24_000
    assert found["hosts imported"] == [] and found["others installed"] == []


def test_the_readme_tables_give_every_knob_with_its_default_and_range():
    from perfusion_core.knobs import GATE, RECIPE

    readme = (ROOT / "README.md").read_text()
    for name, knob in GATE.items():
        row = re.search(rf"^\| `{name}` \| ([^|]+) \| ([^|]+) \|", readme, re.MULTILINE)
        assert row, f"README's gate table lacks {name}"
        assert float(row[1]) == knob.default and row[2].strip() == f"{knob.low:g}–{knob.high:g}", row[0]
    training = readme[readme.index("| training knob |"):]
    for name in RECIPE:
        assert f"`{name}`" in training.split("\n\n")[0], f"README's training table lacks {name}"
