"""Global key-locking where the host encodes the prompts: the superclass prompt, and the superclass twin of each
context row the host encoded, which the K projections read in that row's place."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping

import torch
from torch import Tensor

KEPT_ROWS = 64  # encoded prompt rows remembered (embeddings encoded once may be sampled from several times)


def to_superclass(prompt: str, superclasses: Mapping[str, str]) -> str:
    """`prompt` with each concept word (`superclasses` maps it to its superclass word) replaced where it stands as a
    whole word, in any case: with `{"hugsy": "teddy"}`, "Hugsy, hugsy!" becomes "teddy, teddy!" and "hugsys" stays."""
    if not superclasses:
        return prompt
    lookup = {word.lower(): superclass for word, superclass in superclasses.items()}
    words = "|".join(re.escape(word) for word in sorted(lookup, key=len, reverse=True))
    return re.sub(rf"(?<!\w)({words})(?!\w)", lambda m: lookup[m.group(1).lower()], prompt, flags=re.IGNORECASE)


class SuperclassTwins:
    """Context rows encoded from prompts with concept words, each kept with its twin: the same prompt encoded with
    the superclass words in their place."""

    def __init__(self, kept: int = KEPT_ROWS) -> None:
        self._pairs: deque[tuple[Tensor, Tensor]] = deque(maxlen=kept)

    def keep(self, encoded: Tensor, twins: Tensor) -> None:
        """Remember each row of `encoded` (batch, tokens, width) that differs from its row of `twins`."""
        for row, twin in zip(encoded.detach(), twins.detach(), strict=True):
            if not row.equal(twin):
                self._pairs.append((row, twin))

    def context(self, context: Tensor) -> Tensor:
        """The superclass context for `context`: each row's twin, or the row itself where none was kept (a prompt
        without concept words, or one encoded elsewhere)."""
        return torch.stack([self._twin(row) for row in context])

    def _twin(self, row: Tensor) -> Tensor:
        for encoded, twin in reversed(self._pairs):
            if encoded.device == row.device and encoded.dtype == row.dtype and encoded.equal(row):
                return twin
        return row
