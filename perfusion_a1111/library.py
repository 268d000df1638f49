"""The folder of concept files (`models/perfusion`): listing, lookup by name or hash, cached loading, and the
region masks saved beside them (`regions/NAME.png`)."""

from __future__ import annotations

import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

from perfusion_core import Concept, ConceptFileError, PerfusionError, load_concept
from perfusion_core.files import atomic_write_bytes
from perfusion_core.regions import NAMED
from perfusion_core.train import state_path_for

from .tags import TAG

SUFFIX = ".safetensors"
REGIONS = "regions"
_REGION_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


@dataclass
class ConceptFile:
    """A concept file on disk, known by its header metadata, or a damaged one, known by its `ConceptFileError`."""

    name: str  # path below the folder without the suffix, '/'-separated: what the prompt tag names
    path: Path
    metadata: dict[str, str]
    error: str = ""  # why the file does not load (its ConceptFileError's message); empty for a sound file
    _hash: tuple[tuple[int, int], str] | None = field(default=None, repr=False)

    @property
    def word(self) -> str:
        return self.metadata.get("perfusion.concept_word", "")

    @property
    def superclass(self) -> str:
        return self.metadata.get("perfusion.superclass_word", "")

    @property
    def family(self) -> str:
        return self.metadata.get("perfusion.family", "")

    @property
    def description(self) -> str:
        return self.metadata.get("modelspec.description", "")

    @property
    def thumbnail(self) -> str:
        """A `data:image/...` URI stored in the file, or empty."""
        thumb = self.metadata.get("modelspec.thumbnail", "")
        return thumb if thumb.startswith("data:image/") else ""

    @property
    def shorthash(self) -> str:
        """The first 12 hex digits of the file's SHA-256 (recomputed when the file changes)."""
        stamp = _stamp(self.path)
        if self._hash is None or self._hash[0] != stamp:
            self._hash = (stamp, hashlib.sha256(self.path.read_bytes()).hexdigest()[:12])
        return self._hash[1]

    @property
    def summary(self) -> str:
        """The card's default description: what the concept is and which base model it is for, or what is wrong."""
        if self.error:
            return f"damaged: {self.error}"
        what = f"{self.word}, a {self.superclass}" if self.superclass else self.word
        text = f"{what} ({self.family})"
        return f"{text}: {self.description}" if self.description else text

    def card_prompt(self, beta: float) -> str:
        """What a click on the card inserts: the tag, and the concept word the tag does not add."""
        return f"<{TAG}:{self.name}:{beta:g}> {self.word}"

    def card_metadata(self) -> dict[str, str]:
        """What a card shows in its metadata view."""
        shown = {
            "damaged": self.error,
            "trigger word": self.word,
            "superclass": self.superclass,
            "base model": self.family,
            "context width": self.metadata.get("perfusion.context_dim", ""),
            "text-encoder layer": self.metadata.get("perfusion.text_encoder_layer", ""),
            "created": self.metadata.get("perfusion.created_at", ""),
            "description": self.description,
        }
        shown |= {f"training {k.removeprefix('perfusion.train.')}": v for k, v in self.metadata.items()
                  if k.startswith("perfusion.train.")}
        return {k: v for k, v in shown.items() if v}


def read_header(path: Path) -> dict[str, str] | None:
    """The metadata of a readable safetensors file, or None for one that cannot be read."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception:  # damaged: the caller names what is wrong
        return None


class ConceptLibrary:
    """Concept files below one folder; `load` caches each concept until its file changes."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.files: dict[str, ConceptFile] = {}
        self._loaded: dict[Path, tuple[tuple[int, int], Concept]] = {}

    def refresh(self) -> None:
        """Rescan the folder (recursively). Readable files that are not concepts (a LoRA) and training states are
        skipped; a concept that does not load, or a file that cannot be read, is listed with its error."""
        found: dict[str, ConceptFile] = {}
        if self.folder.is_dir():
            for path in sorted(self.folder.rglob(f"*{SUFFIX}")):
                metadata = read_header(path)
                if state_path_for(path) == path or (metadata is not None and "perfusion.concept_word" not in metadata):
                    continue
                name = path.relative_to(self.folder).as_posix().removesuffix(SUFFIX)
                old = self.files.get(name)
                file = ConceptFile(name, path, metadata or {}, _hash=old._hash if old else None)
                try:
                    self.load(file)
                except ConceptFileError as error:
                    file.error = str(error)
                found[name] = file
        self.files = found

    def find(self, name: str) -> ConceptFile:
        """The file a tag names: its path below the folder, or its bare file name when that is unique."""
        for attempt in range(2):
            if name in self.files:
                return self.files[name]
            by_stem = [f for f in self.files.values() if f.name.rsplit("/", 1)[-1] == name]
            if len(by_stem) == 1:
                return by_stem[0]
            if len(by_stem) > 1:
                raise PerfusionError(
                    f"perfusion concept '{name}' is ambiguous: {', '.join(f.name for f in by_stem)}; "
                    "write the folder too"
                )
            if attempt == 0:
                self.refresh()
        known = ", ".join(sorted(self.files)[:12]) or "none"
        raise PerfusionError(
            f"perfusion concept '{name}' not found in {self.folder} (known: {known}): check the name in "
            f"<perfusion:{name}:...>, or put {name}{SUFFIX} into that folder"
        )

    def region(self, name: str) -> str | torch.Tensor:
        """What `region=NAME` means: a named region, or the mask `regions/NAME.png` (white: the concept's place)."""
        if name in NAMED:
            return name
        path = self.folder / REGIONS / f"{name}.png"
        if not _REGION_NAME.match(name) or not path.is_file():
            raise PerfusionError(f"region '{name}' is neither one of {', '.join(NAMED)} nor a mask in "
                                 f"{path.parent}: save one in the Perfusion tab, or name a region")
        with Image.open(path) as image:
            return torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32) / 255)

    def save_region(self, name: str, image: Image.Image) -> Path:
        """Save `image` as the grayscale mask `regions/NAME.png` (atomically) and return its path."""
        if not _REGION_NAME.match(name or "") or name in NAMED:
            raise PerfusionError(f"region name {name!r}: use letters, digits, - and _, other than {', '.join(NAMED)}")
        buffer = io.BytesIO()
        image.convert("L").save(buffer, format="PNG")
        path = self.folder / REGIONS / f"{name}.png"
        atomic_write_bytes(path, buffer.getvalue())
        return path

    def by_hash(self, shorthash: str) -> ConceptFile | None:
        return next((f for f in self.files.values() if f.shorthash == shorthash), None)

    def load(self, file: ConceptFile) -> Concept:
        """The concept in `file`, read again only when the file has changed since the last load."""
        stamp = _stamp(file.path)
        cached = self._loaded.get(file.path)
        if cached is None or cached[0] != stamp:
            cached = (stamp, load_concept(file.path))
            self._loaded[file.path] = cached
        return cached[1]
