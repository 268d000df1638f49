"""Global key-locking on A1111: the K projections read the prompt encoded with the superclass word.

The text encoder is hooked: whenever it encodes prompts holding a globally locked concept word, it also
encodes them with the superclass word in its place, and the pair of encodings is kept. Before each UNet
call, every context row that is (or begins with) a kept encoding is replaced by its superclass twin and
handed to the patch (`PatchHandle.set_superclass_context`); other rows (the negative prompt, prompts without
the word) are their own superclass prompt.
"""

from __future__ import annotations

import re
from collections import deque

import torch
from torch import Tensor, nn

from perfusion_core import PatchHandle, PerfusionError

KEPT = 64  # encoded prompts remembered (the web UI may reuse cached conditioning in later generations)


class SuperclassContexts:
    def __init__(self) -> None:
        self.pairs: deque[tuple[Tensor, Tensor]] = deque(maxlen=KEPT)
        self.words: dict[str, str] = {}
        self.handle: PatchHandle | None = None
        self._hooks: list = []
        self._encoding = False
        self._pattern: re.Pattern | None = None

    def install(self, sd_model, unet: nn.Module, handle: PatchHandle, words: dict[str, str]) -> None:
        """Follow `words` (concept word -> superclass) for `handle` until `remove()`."""
        if getattr(sd_model, "is_sdxl", False):
            raise PerfusionError("lock=global is not available for SDXL in this web UI yet: leave lock out")
        self.remove()
        if words != self.words:
            self.pairs.clear()
        self.words, self.handle = words, handle
        self._pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b")
        self._hooks = [sd_model.cond_stage_model.register_forward_hook(self._after_encoding),
                       unet.register_forward_pre_hook(self._before_unet, with_kwargs=True)]

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self.handle = None

    def _after_encoding(self, module: nn.Module, args: tuple, output) -> None:
        texts = args[0] if args else None
        if self._encoding or not isinstance(texts, list) or not isinstance(output, Tensor):
            return
        if not any(self._pattern.search(t) for t in texts):
            return
        superclass_texts = [self._pattern.sub(lambda m: self.words[m.group(1)], t) for t in texts]
        self._encoding = True
        try:
            twins = module(superclass_texts)
        finally:
            self._encoding = False
        if twins.shape != output.shape:
            raise PerfusionError("lock=global: the superclass word does not take the concept word's place "
                                 "token for token; use a one-token superclass")
        for text, row, twin in zip(texts, output.detach(), twins.detach(), strict=True):
            if self._pattern.search(text):
                self.pairs.append((row, twin))

    def twin(self, row: Tensor) -> Tensor:
        """The superclass counterpart of one context row (itself when it holds no concept word)."""
        for encoded, twin in reversed(self.pairs):
            n = encoded.shape[0]
            if row.shape[0] >= n and encoded.device == row.device and torch.equal(row[:n], encoded.to(row.dtype)):
                return torch.cat([twin.to(row.dtype), row[n:]])  # padding added by the sampler is kept
        return row

    def _before_unet(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        context = kwargs.get("context")
        if self.handle is not None and isinstance(context, Tensor):
            self.handle.set_superclass_context(torch.stack([self.twin(row) for row in context]))
