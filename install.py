"""Install what Perfusion needs at run time and is missing; never torch, which the host brings.

AUTOMATIC1111, Forge and reForge run this file on every launch with their `launch` module importable (its
`run_pip` honours --skip-install and the host's index settings); ComfyUI-Manager runs it without `launch`,
and then pip runs in this interpreter. Packages already installed are left alone, whatever their version.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().with_name("requirements.txt")
HOST_PACKAGES = {"torch"}  # installed and pinned by the host: installing it here could replace a CUDA build


def requirement_names(text: str) -> list[str]:
    """Distribution names in a requirements file, without versions, markers or comments."""
    names = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
        if match:
            names.append(match.group(0))
    return names


def is_installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def missing(names: list[str]) -> list[str]:
    return [n for n in names if n.lower() not in HOST_PACKAGES and not is_installed(n)]


def install(names: list[str]) -> None:
    try:
        import launch
    except ImportError:
        launch = None
    if launch is not None:
        launch.run_pip("install " + " ".join(f'"{n}"' for n in names), f"Perfusion requirements: {', '.join(names)}")
    else:
        subprocess.check_call([sys.executable, "-m", "pip", "install", *names])


def main() -> None:
    needed = missing(requirement_names(REQUIREMENTS.read_text(encoding="utf-8")))
    if needed:
        install(needed)


if __name__ == "__main__":
    main()
