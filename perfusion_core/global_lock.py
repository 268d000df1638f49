"""Global key-locking where the host encodes the prompts: the superclass twin of each context row the host encoded
(the prompt encoded with `words.to_superclass`), which the K projections read in that row's place."""

from __future__ import annotations

from collections import deque

import torch
from torch import Tensor

KEPT_ROWS = 64  # encoded prompt rows remembered (embeddings encoded once may be sampled from several times)


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
