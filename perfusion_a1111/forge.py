"""Forge and reForge: install the uses recorded by `activate` in the UNet clone of one sampling pass.

Forge resets `forge_objects` before every batch and hires pass, so a patch on a clone never outlives its
pass. Each `attn2.to_k`/`to_v` gets an object patch of its `forward` only: parameters keep their names
and the module's own forward (LoRA, fp8/GGUF casting) still computes the projection.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from perfusion_core import build_patch, cross_attention_layers
from perfusion_core.rank1 import GatedProjection

from . import backend
from .network import USES_ATTRIBUTE


def _patched_forward(original: Callable[..., Tensor], projection: GatedProjection) -> Callable[..., Tensor]:
    def forward(x: Tensor, *args, **kwargs) -> Tensor:
        return projection(lambda e: original(e, *args, **kwargs), x)

    return forward


def patch_clone(p) -> None:
    """Replace `p.sd_model.forge_objects.unet` by a clone carrying the recorded concepts (if any)."""
    uses = getattr(p, USES_ATTRIBUTE, None)
    if not uses or not backend.is_forge(p.sd_model):
        return
    unet = p.sd_model.forge_objects.unet.clone()
    layers = cross_attention_layers(unet.model.diffusion_model)
    patches = build_patch(layers, uses)
    for layer in layers:
        patch = patches[layer.name]
        for name, projection in (("to_k", patch.key), ("to_v", patch.value)):
            if projection is not None:
                key = f"diffusion_model.{layer.path}.{name}.forward"
                unet.add_object_patch(key, _patched_forward(unet.get_model_object(key), projection))
    p.sd_model.forge_objects.unet = unet
