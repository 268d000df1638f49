"""A trained concept: its targets, its word embedding(s), and what it was trained against."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .errors import PerfusionError

FAMILIES = {"sd1": 768, "sd2": 1024, "sdxl": 2048}
"""Known base families and their context widths; other widths are accepted as family `d<width>`."""

ARCHITECTURES = {
    "sd1": "stable-diffusion-v1/perfusion",
    "sd2": "stable-diffusion-v2/perfusion",
    "sdxl": "stable-diffusion-xl-v1-base/perfusion",
}


def family_for_width(context_dim: int) -> str:
    """The base family a context width implies (`sd1`, `sd2`, `sdxl`), or `d<width>` for other models."""
    for family, width in FAMILIES.items():
        if width == context_dim:
            return family
    return f"d{context_dim}"


@dataclass
class Concept:
    """Everything inference needs of one concept.

    `i_star`, `v = C⁻¹ i*` and `i_super` live in the context space (width `context_dim`);
    `o_v` maps each cross-attention layer's canonical name to its value target;
    `embeddings` holds the concept word's input embedding, one per text encoder;
    `o_k` is empty for a key-locked concept (the paper's method), or holds trained key targets per layer.
    """

    word: str
    superclass: str
    family: str
    context_dim: int
    text_encoder_layer: str
    i_star: Tensor
    v: Tensor
    i_super: Tensor
    embeddings: list[Tensor]
    o_v: dict[str, Tensor]
    o_k: dict[str, Tensor] = field(default_factory=dict)
    c_fingerprint: str = ""
    training: dict[str, str] = field(default_factory=dict)
    title: str = ""
    description: str = ""
    created_at: str = ""
    thumbnail: str = ""  # a data URI (modelspec.thumbnail), or empty

    def __post_init__(self) -> None:
        self.validate()

    @property
    def name(self) -> str:
        return self.title or self.word

    def validate(self) -> None:
        """Raise `PerfusionError` unless shapes agree and every tensor is finite."""
        d = self.context_dim
        if not self.word or any(c.isspace() for c in self.word):
            raise PerfusionError(f"concept word {self.word!r} must be one non-empty word without spaces")
        for label, t in (("i*", self.i_star), ("v", self.v), ("i_super", self.i_super)):
            if t.shape != (d,):
                raise PerfusionError(f"concept {self.word!r}: {label} has shape {tuple(t.shape)}, expected ({d},)")
        if not self.embeddings or any(e.ndim != 1 for e in self.embeddings):
            raise PerfusionError(f"concept {self.word!r}: needs one 1-d word embedding per text encoder")
        if not self.o_v or any(t.ndim != 1 for t in self.o_v.values()):
            raise PerfusionError(f"concept {self.word!r}: needs one 1-d value target per cross-attention layer")
        if self.o_k and (set(self.o_k) != set(self.o_v) or any(t.ndim != 1 for t in self.o_k.values())):
            raise PerfusionError(f"concept {self.word!r}: trained key targets must cover the value targets' layers")
        tensors = [self.i_star, self.v, self.i_super, *self.embeddings, *self.o_v.values(), *self.o_k.values()]
        if not all(torch.isfinite(t).all() for t in tensors):
            raise PerfusionError(f"concept {self.word!r} contains NaN or inf values: retrain it")
        if float(self.i_star.double() @ self.v.double()) <= 0:
            raise PerfusionError(f"concept {self.word!r}: i*·v must be positive (v = C⁻¹ i*); the file is damaged")

    @property
    def key_locked(self) -> bool:
        """True when K is locked to the superclass (no trained key targets)."""
        return not self.o_k

    @property
    def trained_lock(self) -> str:
        """The locking the concept was trained with (`local` for files that do not say), which applying it defaults
        to."""
        return self.training.get("lock", "local")

    @property
    def architecture(self) -> str:
        return ARCHITECTURES.get(self.family, f"{self.family}/perfusion")
