"""Concept files: one lean `.safetensors` per concept, saved atomically, loaded without unpickling."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import Tensor

from .concept import Concept
from .errors import ConceptFileError, PerfusionError
from .layers import canonical_layer

FORMAT_VERSION = 1
MAX_FILE_BYTES = 64 * 1024 * 1024  # a concept is ~40-220 KB; anything this large is not one
FP16_TOLERANCE = 1e-3  # largest relative rounding error of a tensor stored in fp16
IMPLEMENTATION = "https://github.com/perfusion-project/perfusion"
_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl")
_ALLOWED_DTYPES = (torch.float16, torch.float32)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the file from a UI running as another user
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> None:
    """Atomically save contiguous CPU tensors and string metadata as safetensors."""
    tensors = {k: t.detach().cpu().contiguous() for k, t in tensors.items()}
    atomic_write_bytes(path, save_safetensors_bytes(tensors, metadata=dict(metadata)))


def _compact(t: Tensor) -> Tensor:
    """fp16 when rounding moves no element by more than FP16_TOLERANCE of the tensor's scale, else fp32."""
    t = t.detach().float().cpu()
    half = t.half()
    scale = t.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
    if torch.isfinite(half).all() and float((half.float() - t).abs().max() / scale) <= FP16_TOLERANCE:
        return half
    return t


def _digest(tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> str:
    h = hashlib.sha256()
    if metadata is not None:
        h.update(json.dumps(dict(metadata), sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def concept_tensors(concept: Concept) -> dict[str, Tensor]:
    """The tensors a concept file holds, named by role and by layer path.

    `i*` and `v` stay float32 (every similarity divides by `i*·v`); the rest is stored in fp16 where
    that rounds no element by more than FP16_TOLERANCE of its tensor's scale.
    """
    tensors = {
        "i_star": concept.i_star.detach().float().cpu(),
        "v": concept.v.detach().float().cpu(),
        "i_super": _compact(concept.i_super),
    }
    tensors.update({f"embedding.{k}": _compact(e) for k, e in enumerate(concept.embeddings)})
    tensors.update({f"{layer}.o_v": _compact(t) for layer, t in concept.o_v.items()})
    tensors.update({f"{layer}.o_k": _compact(t) for layer, t in concept.o_k.items()})
    return tensors


def save_concept(concept: Concept, path: str | os.PathLike) -> Path:
    """Save `concept` atomically to `path` (a `.safetensors` file) and return the path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise PerfusionError(f"concept files end in .safetensors, got {path.name!r}: rename the output")
    concept.validate()
    tensors = concept_tensors(concept)
    now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    created = concept.created_at or now
    metadata = {
        "perfusion.format_version": str(FORMAT_VERSION),
        "perfusion.concept_word": concept.word,
        "perfusion.superclass_word": concept.superclass,
        "perfusion.family": concept.family,
        "perfusion.context_dim": str(concept.context_dim),
        "perfusion.text_encoder_layer": concept.text_encoder_layer,
        "perfusion.c_fingerprint": concept.c_fingerprint,
        "perfusion.created_at": created,
        **{f"perfusion.train.{k}": str(v) for k, v in concept.training.items()},
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": concept.architecture,
        "modelspec.implementation": IMPLEMENTATION,
        "modelspec.title": concept.title or concept.word,
        "modelspec.trigger_phrase": concept.word,
        "modelspec.date": created[:10],
        "modelspec.hash_sha256": "0x" + _digest(tensors),
    }
    if concept.description:
        metadata["modelspec.description"] = concept.description
    if concept.thumbnail:
        metadata["modelspec.thumbnail"] = concept.thumbnail
    metadata["perfusion.checksum"] = _digest(tensors, metadata)
    save_tensors(path, tensors, metadata)
    return path


def _refuse_pickle(path: Path, head: bytes) -> None:
    # a safetensors file starts with its header length (whose first byte may be 0x80) and then "{"
    pickled = head.startswith(b"PK\x03\x04") or (head.startswith(b"\x80") and head[8:9] != b"{")
    if path.suffix.lower() in _PICKLE_SUFFIXES or pickled:
        raise ConceptFileError(
            f"{path.name} is a pickle-based file ({path.suffix or 'pickle data'}); perfusion never unpickles "
            f"files. Convert it once with: python -m perfusion_core convert {path.name} OUT.safetensors"
        )


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a small safetensors file into memory and return `(tensors, metadata)`; never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise ConceptFileError(f"concept file {path} does not exist: check the name and the folder")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ConceptFileError(f"{path.name} is {size >> 20} MB, far too large for a concept file: wrong file?")
    data = path.read_bytes()
    _refuse_pickle(path, data[:9])
    if len(data) < 8:
        raise ConceptFileError(f"{path.name} is truncated ({len(data)} bytes): copy or download it again")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8:
        raise ConceptFileError(
            f"{path.name} is truncated or corrupt (header says {header_len} bytes, file has {len(data) - 8}): "
            "copy or download it again"
        )
    try:
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
        tensors = load_safetensors_bytes(data)
    except Exception as exc:  # safetensors and json raise several types for damaged input
        raise ConceptFileError(
            f"{path.name} is not a valid safetensors file ({exc}): copy or download it again"
        ) from None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ConceptFileError(f"{path.name} has malformed metadata: copy or download it again")
    return tensors, metadata


def _require(metadata: Mapping[str, str], key: str, path: Path) -> str:
    if key not in metadata:
        raise ConceptFileError(f"{path.name} has no '{key}' entry: it is not a perfusion concept, or is damaged")
    return metadata[key]


def _take(tensors: Mapping[str, Tensor], key: str, path: Path) -> Tensor:
    if key not in tensors:
        raise ConceptFileError(f"{path.name} lacks the tensor '{key}': the file is damaged, retrain or re-save it")
    t = tensors[key]
    if t.dtype not in _ALLOWED_DTYPES:
        raise ConceptFileError(f"{path.name}: tensor '{key}' has dtype {t.dtype}, expected float16 or float32")
    return t.float()


def load_concept(path: str | os.PathLike) -> Concept:
    """Load a concept file, checking its format version, checksum, shapes and values."""
    path = Path(path)
    tensors, metadata = read_safetensors(path)
    _check_version(metadata, path)
    checksum = _require(metadata, "perfusion.checksum", path)
    expected = _digest(tensors, {k: v for k, v in metadata.items() if k != "perfusion.checksum"})
    if checksum != expected:
        raise ConceptFileError(f"{path.name} fails its checksum: the file is corrupt, copy or download it again")
    return concept_from_parts(tensors, metadata, path)


def _check_version(metadata: Mapping[str, str], path: Path) -> None:
    version = _require(metadata, "perfusion.format_version", path)
    if not version.isdigit():
        raise ConceptFileError(f"{path.name} has an unreadable format version {version!r}: the file is damaged")
    if int(version) > FORMAT_VERSION:
        raise ConceptFileError(
            f"{path.name} uses concept format {version}, newer than this perfusion reads ({FORMAT_VERSION}): "
            "update perfusion"
        )


def concept_from_parts(tensors: Mapping[str, Tensor], metadata: Mapping[str, str], path: Path) -> Concept:
    """Build a `Concept` from a file's tensors and metadata; errors name the file."""
    context_dim = _require(metadata, "perfusion.context_dim", path)
    if not context_dim.isdigit():
        raise ConceptFileError(f"{path.name} has an unreadable context width {context_dim!r}")
    n_embeddings = sum(1 for k in tensors if k.startswith("embedding."))
    prefix = "perfusion.train."
    family = _require(metadata, "perfusion.family", path)
    try:
        return Concept(
            word=_require(metadata, "perfusion.concept_word", path),
            superclass=_require(metadata, "perfusion.superclass_word", path),
            family=family,
            context_dim=int(context_dim),
            text_encoder_layer=canonical_layer(_require(metadata, "perfusion.text_encoder_layer", path), family),
            i_star=_take(tensors, "i_star", path),
            v=_take(tensors, "v", path),
            i_super=_take(tensors, "i_super", path),
            embeddings=[_take(tensors, f"embedding.{k}", path) for k in range(n_embeddings)],
            o_v={k[: -len(".o_v")]: _take(tensors, k, path) for k in sorted(tensors) if k.endswith(".o_v")},
            o_k={k[: -len(".o_k")]: _take(tensors, k, path) for k in sorted(tensors) if k.endswith(".o_k")},
            c_fingerprint=metadata.get("perfusion.c_fingerprint", ""),
            training={k[len(prefix) :]: v for k, v in metadata.items() if k.startswith(prefix)},
            title=metadata.get("modelspec.title", ""),
            description=metadata.get("modelspec.description", ""),
            created_at=metadata.get("perfusion.created_at", ""),
            thumbnail=metadata.get("modelspec.thumbnail", ""),
        )
    except ConceptFileError:
        raise
    except PerfusionError as exc:
        raise ConceptFileError(f"{path.name}: {exc}") from None


def convert_pickled(source: str | os.PathLike, target: str | os.PathLike) -> Concept:
    """Convert a concept saved with `torch.save` (tensors by our names, plus a `metadata` dict of strings).

    Reads with `weights_only=True`, so no code in the file runs; writes a checked `.safetensors`.
    """
    source = Path(source)
    try:
        data = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConceptFileError(f"cannot read {source.name} as a weights-only torch file ({exc})") from None
    if not isinstance(data, dict):
        raise ConceptFileError(f"{source.name} holds a {type(data).__name__}, expected a dict of tensors")
    metadata = data.get("metadata", {})
    tensors = {k: t for k, t in data.items() if isinstance(t, Tensor)}
    if not isinstance(metadata, dict):
        raise ConceptFileError(f"{source.name}: 'metadata' must be a dict of strings")
    metadata = {str(k): str(v) for k, v in metadata.items()}
    _check_version({"perfusion.format_version": str(FORMAT_VERSION), **metadata}, source)
    concept = concept_from_parts(tensors, metadata, source)
    save_concept(concept, target)
    return concept
