"""Global key-locking in the web UI: the K projections read the prompt encoded with the superclass word.

The model's `get_learned_conditioning` is wrapped: whenever it encodes prompts holding a globally locked
concept word, it also encodes them with the superclass word in its place, and the pair of encodings is kept.
Before each UNet call, every context row made of kept encodings has them replaced by their superclass twins,
and K reads the result: through the patch handle on A1111, through `key_input` in Forge's UNet clones. Other
rows (the negative prompt, prompts without the word) are their own superclass prompt.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable

import torch
from torch import Tensor, nn

from perfusion_core import PatchHandle, PerfusionError
from perfusion_core.patch import superclass_input
from perfusion_core.words import mentions, to_superclass

KEPT = 64  # encoded prompts remembered (the web UI may reuse cached conditioning in later generations)
METHOD = "get_learned_conditioning"


def _crossattn(conditioning: Tensor | dict) -> Tensor:
    """The cross-attention context of one encoding (SDXL's is a dict that also holds the pooled vector)."""
    return conditioning["crossattn"] if isinstance(conditioning, dict) else conditioning


class SuperclassContexts:
    def __init__(self) -> None:
        self.pairs: deque[tuple[Tensor, Tensor]] = deque(maxlen=KEPT)
        self.words: dict[str, str] = {}
        self.handle: PatchHandle | None = None
        self.context: Tensor | None = None
        self._sd_model = self._wrapper = self._replaced = None
        self._hook = None

    def install(self, sd_model, unet: nn.Module, handle: PatchHandle | None, words: dict[str, str]) -> None:
        """Follow `words` (concept word -> superclass) until `remove()`; hand each UNet call's superclass
        context to `handle` (A1111) or keep it for `key_input` (Forge)."""
        self.remove()
        if words != self.words:
            self.pairs.clear()
        self.words, self.handle = words, handle
        self._sd_model, self._replaced = sd_model, vars(sd_model).get(METHOD)  # another extension's wrapper
        self._wrapper = self._encoding(getattr(sd_model, METHOD))
        setattr(sd_model, METHOD, self._wrapper)
        self._hook = unet.register_forward_pre_hook(self._before_unet, with_kwargs=True)

    def remove(self) -> None:
        if self._sd_model is not None and vars(self._sd_model).get(METHOD) is self._wrapper:
            if self._replaced is None:
                delattr(self._sd_model, METHOD)  # the model's own method shows again
            else:
                setattr(self._sd_model, METHOD, self._replaced)
        self._sd_model = self._wrapper = self._replaced = None
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.handle = self.context = None

    def _encoding(self, encode: Callable) -> Callable:
        def get_learned_conditioning(texts, *args, **kwargs):
            conditioning = encode(texts, *args, **kwargs)
            if torch.is_grad_enabled() or not any(mentions(t, self.words) for t in texts):
                # training (here or in another tab) encodes with gradients: K is not locked there, and kept rows
                # would hold their graphs
                return conditioning
            superclass_texts = copy.copy(texts)  # the web UI's prompt list carries the image size
            superclass_texts[:] = [to_superclass(t, self.words) for t in texts]
            self._keep(texts, _crossattn(conditioning), _crossattn(encode(superclass_texts, *args, **kwargs)))
            return conditioning

        return get_learned_conditioning

    def _keep(self, texts: list[str], encoded: Tensor, twins: Tensor) -> None:
        if twins.shape != encoded.shape:
            raise PerfusionError("lock=global: the superclass word does not take the concept word's place "
                                 "token for token; use a one-token superclass")
        for text, row, twin in zip(texts, encoded, twins, strict=True):
            if mentions(text, self.words):
                self.pairs.append((row, twin))

    def twin(self, row: Tensor) -> Tensor:
        """The superclass counterpart of one context row (itself where it holds no concept word).

        The sampler may lengthen a row: A1111 pads it with the empty prompt, Forge repeats it whole.
        """
        for encoded, twin in reversed(self.pairs):
            n = encoded.shape[0]
            if row.shape[0] < n or encoded.device != row.device or not torch.equal(row[:n], encoded.to(row.dtype)):
                continue
            chunks = row.split(n)
            return torch.cat([twin.to(row.dtype)[:len(c)] if torch.equal(c, encoded[:len(c)].to(row.dtype)) else c
                              for c in chunks])
        return row

    def _before_unet(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        context = kwargs.get("context")
        if isinstance(context, Tensor):
            self.context = torch.stack([self.twin(row) for row in context])
            if self.handle is not None:
                self.handle.set_superclass_context(self.context)

    def key_input(self, e: Tensor) -> Tensor:
        """The superclass prompt that a globally locked K projection reads in place of `e`."""
        return superclass_input(self.context, e)
