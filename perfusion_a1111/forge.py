"""Forge and reForge: install the patch built by `activate` in the UNet clone of one sampling pass.

Forge resets `forge_objects` before every batch and hires pass, so a patch on a clone never outlives its
pass. Each `attn2.to_k`/`to_v` gets an object patch of its `forward` only: parameters keep their names
and the module's own forward (LoRA, fp8/GGUF casting) still computes the projection.

The forward to wrap is the clone's own object patch if it has one, else the module's class method: not
what the module holds now, because the last pass's clone stays loaded (its patch applied) until this
clone is loaded, and Forge's clones do not share the backups that would tell the two apart.

Global locking and regions go in as attn2 patches of the clone, as in ComfyUI: K's superclass prompt first among the
attn2 patches (`perfusion_core.global_lock.set_superclass_keys`), so that the others (an IP-Adapter-style patch)
transform it as they do the prompt; regions as attn2 replace patches (`perfusion_core.regions.set_attn2_region`).
"""

from __future__ import annotations

from collections.abc import Callable
from types import MethodType

from torch import Tensor, nn

from perfusion_core import cross_attention_layers
from perfusion_core.global_lock import set_superclass_keys
from perfusion_core.patch import gated_forward
from perfusion_core.regions import set_attn2_region

PATCHES_ATTRIBUTE = "perfusion_patches"  # on `p`, recorded on Forge and reForge only: layer name -> LayerPatch


def _unpatched_forward(unet, key: str, module: nn.Module) -> Callable[..., Tensor]:
    return unet.object_patches.get(key) or MethodType(type(module).forward, module)


def patch_clone(p, superclass_input: Callable[[Tensor], Tensor]) -> None:
    """Replace `p.sd_model.forge_objects.unet` by a clone carrying the recorded patch (if any); where it locks keys
    globally, K reads `superclass_input(context)` (and a context-locked V reads it too)."""
    patches = getattr(p, PATCHES_ATTRIBUTE, None)
    if not patches:
        return
    unet = p.sd_model.forge_objects.unet.clone()
    # the prompt of the attention being computed, for the gates of context-locked V projections
    relay = {} if any(patch.value.reads_superclass for patch in patches.values()) else None
    for layer in cross_attention_layers(unet.model.diffusion_model):
        patch, seen = patches[layer.name], {}
        for name, projection in (("to_k", patch.key), ("to_v", patch.value)):
            if projection is not None:
                key = f"diffusion_model.{layer.path}.{name}.forward"
                original = _unpatched_forward(unet, key, getattr(layer, name))
                recording = seen if name == "to_v" and patch.painter is not None else None
                unet.add_object_patch(key, gated_forward(original, projection, seen=recording, relay=relay))
        set_attn2_region(unet.model_options, layer.name, patch.painter, seen)
    locked = any(patch.reads_superclass for patch in patches.values())
    set_superclass_keys(unet.model_options, (lambda context, _options: superclass_input(context)) if locked else None,
                        relay)
    p.sd_model.forge_objects.unet = unet
