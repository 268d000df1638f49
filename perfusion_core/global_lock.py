"""Global key-locking where the host encodes the prompts: the superclass twin of each context row the host encoded
(the prompt encoded with `words.to_superclass`), which the K projections read in that row's place. The one rule of
every host that keeps such a table (diffusers, the web UIs). In ComfyUI-style patchers (ComfyUI, Forge, reForge) K gets
the superclass prompt from their first attn2 patch (`set_superclass_keys`)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import torch
from torch import Tensor

from .errors import PerfusionError

KEPT_ROWS = 64  # encoded prompt rows remembered (embeddings encoded once may be sampled from several times)


class SuperclassTwins:
    """Context rows encoded from prompts with concept words, each kept with its twin: the same prompt encoded with
    the superclass words in their place."""

    def __init__(self, kept: int = KEPT_ROWS) -> None:
        self._pairs: deque[tuple[Tensor, Tensor]] = deque(maxlen=kept)

    def clear(self) -> None:
        self._pairs.clear()

    def keep(self, encoded: Tensor, twins: Tensor) -> None:
        """Remember each row of `encoded` (batch, tokens, width) that differs from its row of `twins`."""
        if twins.shape != encoded.shape:
            raise PerfusionError("lock=global: the superclass word does not take the concept word's place token for "
                                 "token; use a one-token superclass")
        for row, twin in zip(encoded.detach(), twins.detach(), strict=True):
            if not row.equal(twin):
                self._pairs.append((row, twin))

    def context(self, context: Tensor) -> Tensor:
        """The superclass context for `context`: each row's twin, or the row itself where none was kept (a prompt
        without concept words, or one encoded elsewhere)."""
        return torch.stack([self._twin(row) for row in context])

    def _twin(self, row: Tensor) -> Tensor:
        """A kept row's twin, in `row`'s dtype. A sampler may lengthen a row before the UNet (A1111 pads it with the
        empty prompt's chunks, Forge repeats it whole): each part of it that is the kept row, or its start, becomes the
        twin's part; the other parts stay."""
        for encoded, twin in reversed(self._pairs):
            n = encoded.shape[0]
            if row.shape[0] < n or encoded.device != row.device or not row[:n].equal(encoded.to(row.dtype)):
                continue
            return torch.cat([twin[:len(part)].to(row.dtype) if part.equal(encoded[:len(part)].to(row.dtype)) else part
                              for part in row.split(n)])
        return row


def set_superclass_keys(model_options: dict, reads: Callable[[Tensor, dict], Tensor] | None,
                        relay: dict | None = None) -> None:
    """Put first among the attn2 patches of a ComfyUI-style patcher's `model_options` one that hands K
    `reads(context, transformer_options)` (the superclass prompt) and V the prompt, in place of an earlier one of ours;
    None takes it away. With `relay` (context locking) V gets the superclass prompt too, and the prompt is left as
    `relay["prompt"]` for the gates of the V projection of the same attention (`patch.gated_forward`). The other
    attn2 patches (a hypernetwork, an IP-Adapter) then transform the superclass prompt as they do the prompt. The
    dicts on the way are copied and the list is new: a clone may share them with its source."""
    options = model_options["transformer_options"] = dict(model_options.get("transformer_options", {}))
    patches = options["patches"] = dict(options.get("patches", {}))
    attn2 = [p for p in patches.get("attn2_patch", []) if not getattr(p, "perfusion", False)]
    if reads is not None:
        def superclass_keys(n: Tensor, context: Tensor, value: Tensor,
                            extra_options: dict) -> tuple[Tensor, Tensor, Tensor]:
            superclass = reads(context, extra_options)
            if relay is None:
                return n, superclass, value
            relay["prompt"] = context
            return n, superclass, superclass

        superclass_keys.perfusion = True
        attn2.insert(0, superclass_keys)
    if attn2:
        patches["attn2_patch"] = attn2
    else:
        patches.pop("attn2_patch", None)
