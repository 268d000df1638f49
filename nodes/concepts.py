"""The `models/perfusion` folder and the PERFUSION_CONCEPT type shared by the nodes."""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths
from comfy_api.v0_0_2 import io

from ..perfusion_core import Concept, ConceptFileError, load_concept

FOLDER = "perfusion"
STATE_SUFFIX = ".state.safetensors"
ConceptType = io.Custom("PERFUSION_CONCEPT")


def register_folder() -> None:
    """Register `models/perfusion` (keeping folders from extra_model_paths.yaml) for .safetensors files."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    paths, _ = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    folder_paths.folder_names_and_paths[FOLDER] = ([default, *(p for p in paths if p != default)], {".safetensors"})


def default_folder() -> Path:
    return Path(folder_paths.get_folder_paths(FOLDER)[0])


def concept_names() -> list[str]:
    """Concept files in every perfusion folder (training states left out)."""
    return [name for name in folder_paths.get_filename_list(FOLDER) if not name.endswith(STATE_SUFFIX)]


def concept_path(name: str) -> Path:
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        raise ConceptFileError(
            f"no concept file '{name}' in {', '.join(folder_paths.get_folder_paths(FOLDER))}: put it there "
            "and refresh (press R), or pick another"
        )
    return Path(path)


_cache: dict[Path, tuple[float, Concept]] = {}


def read_concept(name: str) -> Concept:
    """Load a concept by file name, reusing the last load while the file is unchanged."""
    path = concept_path(name)
    mtime = path.stat().st_mtime
    cached = _cache.get(path)
    if cached is None or cached[0] != mtime:
        _cache[path] = (mtime, load_concept(path))
    return _cache[path][1]


def describe(concept: Concept, name: str = "") -> dict[str, str]:
    """What the front end shows of a concept."""
    return {
        "name": name or concept.name,
        "word": concept.word,
        "superclass": concept.superclass,
        "family": concept.family,
        "steps": concept.training.get("steps", "?"),
        "images": concept.training.get("images", "?"),
        "text_encoder_layer": concept.text_encoder_layer,
        "created": concept.created_at,
        "thumbnail": concept.thumbnail,
    }
