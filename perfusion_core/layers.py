"""Find every cross-attention layer of a UNet and give it a host-independent name.

Layers are named as in the original Stable Diffusion (LDM/SGM) UNet, which ComfyUI, A1111, Forge and
reForge all use (`input_blocks.1.1.transformer_blocks.0.attn2`); diffusers paths are translated, so a
concept trained in one host loads in every other.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from .concept import Concept, family_for_width
from .errors import IncompatibleConceptError, PerfusionError

_LDM_ROOTS = ("input_blocks.", "middle_block.", "output_blocks.")
_DIFFUSERS_PATH = re.compile(r"^(down_blocks|up_blocks|mid_block)\.?(\d*)\.attentions\.(\d+)\.(.*)$")


@dataclass(frozen=True)
class CrossAttentionLayer:
    """One cross-attention block: its canonical name, where it sits in this model, and its widths."""

    name: str
    path: str
    module: nn.Module
    context_dim: int
    k_dim: int
    v_dim: int

    @property
    def to_k(self) -> nn.Module:
        return self.module.to_k

    @property
    def to_v(self) -> nn.Module:
        return self.module.to_v


def _features(linear: nn.Module) -> tuple[int, int]:
    weight = getattr(linear, "weight", None)
    in_f = getattr(linear, "in_features", None) or (weight.shape[1] if weight is not None else None)
    out_f = getattr(linear, "out_features", None) or (weight.shape[0] if weight is not None else None)
    if in_f is None or out_f is None:
        raise PerfusionError(f"cannot read the widths of {type(linear).__name__}: not a linear projection")
    return int(in_f), int(out_f)


def _is_cross_attention(name: str, module: nn.Module) -> bool:
    if not all(hasattr(module, p) for p in ("to_q", "to_k", "to_v")):
        return False
    flag = getattr(module, "is_cross_attention", None)
    if flag is not None:
        return bool(flag)
    if name.rsplit(".", 1)[-1] == "attn2":
        return True
    return _features(module.to_k)[0] != _features(module.to_q)[0]


def _diffusers_offsets(unet: nn.Module) -> dict[str, list[int]]:
    """First LDM block index of each diffusers down/up block (LDM counts resnets and downsamplers)."""
    offsets: dict[str, list[int]] = {"down_blocks": [], "up_blocks": []}
    index = 1  # input_blocks.0 is conv_in
    for block in unet.down_blocks:
        offsets["down_blocks"].append(index)
        index += len(block.resnets) + (1 if getattr(block, "downsamplers", None) else 0)
    index = 0
    for block in unet.up_blocks:
        offsets["up_blocks"].append(index)
        index += len(block.resnets)
    return offsets


def canonical_name(path: str, offsets: dict[str, list[int]] | None) -> str:
    """The LDM-style name of a cross-attention module at `path` (diffusers paths translated)."""
    for root in _LDM_ROOTS:
        at = path.find(root)
        if at == 0 or (at > 0 and path[at - 1] == "."):
            return path[at:]
    match = _DIFFUSERS_PATH.match(path)
    if match is None or offsets is None:
        return path
    kind, block, attention, rest = match.groups()
    if kind == "mid_block":
        return f"middle_block.1.{rest}"
    ldm_index = offsets[kind][int(block)] + int(attention)
    return f"{'input_blocks' if kind == 'down_blocks' else 'output_blocks'}.{ldm_index}.1.{rest}"


def cross_attention_layers(unet: nn.Module) -> list[CrossAttentionLayer]:
    """Every cross-attention layer of `unet` (diffusers, ComfyUI, LDM/SGM), in module order."""
    has_diffusers_blocks = all(hasattr(unet, a) for a in ("down_blocks", "up_blocks"))
    offsets = _diffusers_offsets(unet) if has_diffusers_blocks else None
    layers = []
    for path, module in unet.named_modules():
        if not _is_cross_attention(path, module):
            continue
        if getattr(module, "fused_projections", False):
            raise PerfusionError(
                f"{path} has fused K/V projections; perfusion needs separate to_k/to_v: "
                "call unet.unfuse_qkv_projections() first"
            )
        context_dim, k_dim = _features(module.to_k)
        v_context, v_dim = _features(module.to_v)
        if v_context != context_dim:
            raise PerfusionError(f"{path}: to_k reads width {context_dim} but to_v reads {v_context}")
        layers.append(CrossAttentionLayer(canonical_name(path, offsets), path, module, context_dim, k_dim, v_dim))
    if not layers:
        raise PerfusionError(
            f"no cross-attention layer found in {type(unet).__name__}: pass the UNet itself "
            "(diffusers UNet2DConditionModel, ComfyUI/LDM diffusion_model)"
        )
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        raise PerfusionError(f"cross-attention layer names collide in {type(unet).__name__}: unsupported layout")
    return layers


def model_family(layers: list[CrossAttentionLayer]) -> str:
    """The base family of a UNet, from the context width its cross-attention reads."""
    return family_for_width(layers[0].context_dim)


def check_concept(concept: Concept, layers: list[CrossAttentionLayer]) -> None:
    """Raise `IncompatibleConceptError` unless `concept` was made for a UNet with exactly these layers."""
    family = model_family(layers)
    if concept.family != family or concept.context_dim != layers[0].context_dim:
        raise IncompatibleConceptError(
            f"concept '{concept.name}' is for {concept.family} (context width {concept.context_dim}) but this "
            f"model is {family} (context width {layers[0].context_dim}): load a {concept.family} checkpoint, "
            f"or use a concept trained on {family}"
        )
    by_name = {layer.name: layer for layer in layers}
    missing = sorted(set(by_name) - set(concept.o_v))
    extra = sorted(set(concept.o_v) - set(by_name))
    if missing or extra:
        raise IncompatibleConceptError(
            f"concept '{concept.name}' has targets for {len(concept.o_v)} layers but this {family} model has "
            f"{len(by_name)} cross-attention layers (missing: {missing[:3]}, unknown: {extra[:3]}): "
            "it was trained on a differently shaped UNet; retrain it on this model"
        )
    widths = [(name, t, by_name[name].v_dim) for name, t in concept.o_v.items()]
    widths += [(name, t, by_name[name].k_dim) for name, t in concept.o_k.items()]
    for name, target, width in widths:
        if target.shape[0] != width:
            raise IncompatibleConceptError(
                f"concept '{concept.name}': layer {name} has width {width} here but "
                f"{target.shape[0]} in the concept: it was trained on a differently shaped UNet"
            )


def skip_layer_name(skip: int) -> str:
    """The text-encoder layer a CLIP skip of `skip` reads (1: the last), named as concept files record it."""
    return {1: "last", 2: "penultimate"}.get(skip, f"last-{skip - 1}")


# layers of the text encoder whose layer a concept names, by family: CLIP-L, OpenCLIP-H, SDXL's CLIP-L
_TEXT_LAYERS = {"sd1": 12, "sd2": 24, "sdxl": 12}


def canonical_layer(name: str, family: str) -> str:
    """`name` as every host names it: `hiddenN` (counted from the first layer, as ComfyUI-trained files once
    recorded a CLIP skip) becomes the `last-K` / `penultimate` of the family's text encoder."""
    found = re.fullmatch(r"hidden(\d+)", name)
    if found is None or family not in _TEXT_LAYERS:
        return name
    return skip_layer_name(_TEXT_LAYERS[family] - int(found.group(1)))


def encoded_layer(family: str, text_encoders: Sequence[nn.Module], clip_skip: int | None = None) -> str:
    """The text-encoder layer a diffusers pipeline's UNet reads, named as concept files record it.

    SDXL reads the penultimate hidden states; SD2 its last, which in diffusers' OpenCLIP-H (23 layers, the last one
    removed) is the penultimate; SD1 the last. `clip_skip` (the pipeline argument) goes that many layers further back.
    """
    truncated_sd2 = family == "sd2" and text_encoders[0].config.num_hidden_layers == 23
    from_last = 1 if len(text_encoders) == 2 or truncated_sd2 else 0
    return skip_layer_name(from_last + (clip_skip or 0) + 1)


def check_embedding_widths(concept: Concept, widths: list[int], host: str) -> None:
    """Refuse a concept whose word embeddings do not fit the widths of `host`'s text encoders (one per encoder)."""
    given = [int(e.shape[-1]) for e in concept.embeddings]
    if given != list(widths):
        raise IncompatibleConceptError(
            f"concept '{concept.name}' ({concept.family}) has word embeddings of widths {given} but {host}'s text "
            f"encoders take {list(widths)}: it was trained for another base model; use a {concept.family} model"
        )


def check_text_encoder_layer(concept: Concept, layer: str) -> None:
    """Refuse a concept whose `C` and targets came from another text-encoder layer than the host uses."""
    if concept.text_encoder_layer != layer:
        raise IncompatibleConceptError(
            f"concept '{concept.name}' was trained on text-encoder layer '{concept.text_encoder_layer}' but this "
            f"model reads layer '{layer}' (CLIP skip): set CLIP skip to match, or retrain the concept"
        )
