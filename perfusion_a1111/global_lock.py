"""Global key-locking in the web UI: the K projections read the prompt encoded with the superclass word.

The model's `get_learned_conditioning` is wrapped: whenever it encodes prompts holding a globally locked
concept word, it also encodes them with the superclass word in its place, and the pairs of encodings are kept
(`perfusion_core.global_lock.SuperclassTwins`). Before each UNet call, every context row made of kept encodings has
them replaced by their superclass twins; other rows (the negative prompt, prompts without the word) are their own
superclass prompt. On A1111 the result goes through what the host's attention does to K's context (the loaded
hypernetworks' K side), and K reads it through the patch handle. On Forge and reForge `key_input` hands it to an attn2
patch put first in the UNet clone (`forge.patch_clone`): the clone's other attn2 patches transform it as they do the
prompt, and K reads what they make of it, as in ComfyUI.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from perfusion_core import PatchHandle
from perfusion_core.global_lock import SuperclassTwins
from perfusion_core.patch import superclass_input
from perfusion_core.words import mentions, to_superclass
from perfusion_core.wrapping import MethodWrap

METHOD = "get_learned_conditioning"


def _crossattn(conditioning: Tensor | dict) -> Tensor:
    """The cross-attention context of one encoding (SDXL's is a dict that also holds the pooled vector)."""
    return conditioning["crossattn"] if isinstance(conditioning, dict) else conditioning


class SuperclassContexts:
    def __init__(self) -> None:
        self.twins = SuperclassTwins()
        self.words: dict[str, str] = {}
        self.handle: PatchHandle | None = None
        self.context: Tensor | None = None  # what globally locked K projections read in the current UNet call
        self._keys: Callable[[Tensor], Tensor] | None = None
        self._wrap: MethodWrap | None = None
        self._hook = None

    def install(self, sd_model, unet: nn.Module, handle: PatchHandle | None, words: dict[str, str],
                keys: Callable[[Tensor], Tensor] | None = None) -> None:
        """Follow `words` (concept word -> superclass) until `remove()`; hand each UNet call's superclass
        context, turned by `keys` (if given) into what the host's attention gives K, to `handle` (A1111) or keep it
        for `key_input` (Forge, reForge)."""
        self.remove()
        if words != self.words:
            self.twins.clear()
        self.words, self.handle, self._keys = words, handle, keys
        self._wrap = MethodWrap(sd_model, METHOD, self._encoding)
        self._hook = unet.register_forward_pre_hook(self._before_unet, with_kwargs=True)

    def remove(self) -> None:
        if self._wrap is not None:
            self._wrap.remove()
            self._wrap = None
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.handle = self.context = self._keys = None

    def _encoding(self, encode: Callable) -> Callable:
        def get_learned_conditioning(texts, *args, **kwargs):
            conditioning = encode(texts, *args, **kwargs)
            if torch.is_grad_enabled() or not any(mentions(t, self.words) for t in texts):
                # training (here or in another tab) encodes with gradients: K is not locked there, and kept rows
                # would hold their graphs
                return conditioning
            superclass_texts = copy.copy(texts)  # the web UI's prompt list carries the image size
            superclass_texts[:] = [to_superclass(t, self.words) for t in texts]
            self.twins.keep(_crossattn(conditioning), _crossattn(encode(superclass_texts, *args, **kwargs)))
            return conditioning

        return get_learned_conditioning

    def _before_unet(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        context = kwargs.get("context")
        if isinstance(context, Tensor):
            superclass = self.twins.context(context)
            self.context = superclass if self._keys is None else self._keys(superclass)
            if self.handle is not None:
                self.handle.set_superclass_context(self.context)

    def key_input(self, e: Tensor) -> Tensor:
        """The superclass prompt in place of the prompt `e`: what Forge's first attn2 patch hands on to K."""
        return superclass_input(self.context, e)
