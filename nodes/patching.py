"""Install a joint Perfusion patch on a ComfyUI `ModelPatcher`, per clone.

Each cross-attention `to_k` / `to_v` is replaced, through the clone's object patches only, by a
shallow copy of the host's own Linear whose forward runs the core's `GatedProjection` around the
host's forward. The copy shares the host's parameters, so LoRA and other weight patches keyed by the
host's path still reach it; ComfyUI's per-module load flags are dropped from the copy so that it is
loaded and weight-patched on its own terms. Nothing touches the shared module: a run without the patch
sees the model exactly as before.

Global and context locking: the CLIP returned by Apply Perfusion attaches the prompt encoded with the superclass
word as a model condition; a diffusion-model wrapper hands it to an attn2 patch put first
(`perfusion_core.global_lock.set_superclass_keys`), which makes the K pathway read it while V reads the concept
prompt; under context locking V reads it too, and the V copy's gates read the prompt, which that patch relays.

Regions: where a concept has one, each patched layer gets an attn2 replace patch that computes the
attention with the regions' score bias (`perfusion_core.regions`); the layer's V copy records the prompt it
projects, from which the bias finds the concepts' tokens.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import comfy.patcher_extension
from torch import Tensor, nn

from ..perfusion_core import ConceptUse, GatedProjection, PerfusionError, build_patch, cross_attention_layers
from ..perfusion_core.global_lock import set_superclass_keys
from ..perfusion_core.patch import as_uses, gated_forward
from ..perfusion_core.regions import set_attn2_region

ATTACHMENT = "perfusion"
SUPERCLASS_CONTEXT = "perfusion_superclass"
"""Model-condition / transformer-option key of the prompt encoded with the superclass word."""
_HOST = "_perfusion_host"
_LOAD_FLAGS = ("comfy_patched_weights", "prev_comfy_cast_weights",
               # dynamic VRAM loading (0.11+, accelerators): the host's staging slot and what it holds
               "_v", "_v_signature", "_pin_state", "weight_lowvram_function", "bias_lowvram_function")


def current_uses(model) -> list[ConceptUse]:
    """The concepts already applied to `model` by earlier Apply Perfusion nodes."""
    return list(model.get_attachment(ATTACHMENT) or ())


def host_module(module: nn.Module) -> nn.Module:
    """The host's own module behind one of our patched copies (or `module` itself)."""
    return module.__dict__.get(_HOST, module)


def patched_projection(host: nn.Module, projection: GatedProjection, seen: dict | None = None,
                       relay: dict | None = None) -> nn.Module:
    """A shallow copy of `host` whose forward is `projection` around the host's own forward; with `seen`, each
    call's prompt is kept there as `seen["context"]`; `relay` hands a context-locked V's gates the prompt."""
    patched = copy.copy(host)
    state = patched.__dict__
    if "prev_comfy_cast_weights" in state:  # copied mid-load: keep the host's own casting setting
        state["comfy_cast_weights"] = state["prev_comfy_cast_weights"]
    for flag in _LOAD_FLAGS:
        state.pop(flag, None)
    for name in ("weight_function", "bias_function"):
        if isinstance(state.get(name), list):
            state[name] = []
    host_forward = type(host).forward
    state["forward"] = gated_forward(lambda y, *args, **kwargs: host_forward(patched, y, *args, **kwargs),
                                     projection, seen=seen, relay=relay)
    state[_HOST] = host  # a plain attribute, not a child module: the parameter paths stay the host's
    return patched


def _superclass_prompt(context: Tensor, extra_options: dict) -> Tensor:
    """What K reads under global locking: the superclass prompt the wrapper put in the transformer options."""
    superclass = extra_options.get(SUPERCLASS_CONTEXT)
    if superclass is None:  # a prompt encoded without the trigger word: it is its own superclass prompt
        return context
    if superclass.shape != context.shape:
        raise PerfusionError(
            f"global locking: the superclass prompt has shape {tuple(superclass.shape)} but the prompt has "
            f"{tuple(context.shape)}; conditioning was concatenated or edited after CLIPTextEncode. Encode the "
            "final prompt with the CLIP from Apply Perfusion, or use lock 'local'"
        )
    return superclass.to(context)


def _carry_superclass(executor: Callable, *args, **kwargs):
    """Diffusion-model wrapper: move the superclass context from the model kwargs to transformer_options."""
    superclass = kwargs.pop(SUPERCLASS_CONTEXT, None)
    if superclass is not None:
        args = list(args)
        if len(args) > 5:
            args[5] = {**args[5], SUPERCLASS_CONTEXT: superclass}
        else:
            kwargs["transformer_options"] = {**kwargs.get("transformer_options", {}), SUPERCLASS_CONTEXT: superclass}
    return executor(*args, **kwargs)


def _set_global_lock(clone, enabled: bool, relay: dict | None) -> None:
    kind = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
    clone.remove_wrappers_with_key(kind, ATTACHMENT)
    set_superclass_keys(clone.model_options, _superclass_prompt if enabled else None, relay)
    if enabled:
        clone.add_wrapper_with_key(kind, ATTACHMENT, _carry_superclass)


def apply_uses(model, uses: Sequence[ConceptUse]):
    """A clone of `model` carrying the joint patch of `uses` (the earlier Perfusion patch is replaced)."""
    uses = as_uses(uses)
    layers = cross_attention_layers(model.get_model_object("diffusion_model"))
    patches = build_patch(layers, uses)
    clone = model.clone()
    # the prompt of the attention being computed, for the gates of context-locked V copies
    relay = {} if any(use.lock == "context" for use in uses) else None
    for layer in layers:
        patch = patches[layer.name]
        seen: dict = {}
        for side, projection in (("to_k", patch.key), ("to_v", patch.value)):
            key = f"diffusion_model.{layer.path}.{side}"
            host = host_module(clone.get_model_object(key))
            if projection is None:
                clone.object_patches.pop(key, None)
            else:
                recording = seen if side == "to_v" and patch.painter is not None else None
                clone.add_object_patch(key, patched_projection(host, projection, recording, relay))
        set_attn2_region(clone.model_options, layer.name, patch.painter, seen)
    clone.set_attachments(ATTACHMENT, tuple(uses))
    _set_global_lock(clone, any(use.lock != "local" for use in uses), relay)
    return clone
