"""Forge and reForge: install the patch built by `activate` in the UNet clone of one sampling pass.

Forge resets `forge_objects` before every batch and hires pass, so a patch on a clone never outlives its
pass. Each `attn2.to_k`/`to_v` gets an object patch of its `forward` only: parameters keep their names
and the module's own forward (LoRA, fp8/GGUF casting) still computes the projection.

The forward to wrap is the clone's own object patch if it has one, else the module's class method: not
what the module holds now, because the last pass's clone stays loaded (its patch applied) until this
clone is loaded, and Forge's clones do not share the backups that would tell the two apart.

Regions go in as attn2 replace patches of the clone (`perfusion_core.regions.set_attn2_region`), as in ComfyUI.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MethodType

from torch import Tensor, nn

from perfusion_core import cross_attention_layers
from perfusion_core.patch import gated_forward
from perfusion_core.regions import set_attn2_region

from . import backend
from .network import PATCHES_ATTRIBUTE


def _unpatched_forward(unet, key: str, module: nn.Module) -> Callable[..., Tensor]:
    return unet.object_patches.get(key) or MethodType(type(module).forward, module)


def patch_clone(p, superclass_input: Callable[[Tensor], Tensor]) -> None:
    """Replace `p.sd_model.forge_objects.unet` by a clone carrying the recorded patch (if any); globally
    locked K projections read `superclass_input(context)`."""
    patches = getattr(p, PATCHES_ATTRIBUTE, None)
    if not patches or not backend.is_forge(p.sd_model):
        return
    unet = p.sd_model.forge_objects.unet.clone()
    for layer in cross_attention_layers(unet.model.diffusion_model):
        patch, seen = patches[layer.name], {}
        for name, projection, reads in (("to_k", patch.key, superclass_input if patch.key_reads_superclass else None),
                                        ("to_v", patch.value, None)):
            if projection is not None or reads is not None:
                key = f"diffusion_model.{layer.path}.{name}.forward"
                original = _unpatched_forward(unet, key, getattr(layer, name))
                recording = seen if name == "to_v" and patch.painter is not None else None
                unet.add_object_patch(key, gated_forward(original, projection, reads, recording))
        set_attn2_region(unet.model_options, layer.name, patch.painter, seen)
    p.sd_model.forge_objects.unet = unet
