"""Build the joint gated rank-1 patch of a UNet's cross-attention, and install it in place.

Building (`build_patch`) is separate from installing: hosts with patch machinery (ComfyUI, Forge)
install the same `LayerPatch` objects through their own per-clone mechanisms; `patch_unet` installs
them in place with forward hooks for hosts that have none (diffusers, A1111). Hooks leave every module
and parameter where it was, so the host's own projection (LoRA, casting, offloading) still runs, and
removing them restores the model exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .concept import Concept
from .errors import IncompatibleConceptError, PerfusionError
from .knobs import GATE, check_gate
from .layers import CrossAttentionLayer, check_concept, cross_attention_layers
from .rank1 import GatedProjection, GateSettings, JointProjector
from .regions import RegionPainter, as_region

LOCKS = ("local", "global", "context")
log = logging.getLogger("perfusion")


@dataclass(frozen=True)
class ConceptUse:
    """A concept as applied: its gate (β, τ), strength, locking, and optionally a region (an (H, W) mask in [0, 1] of
    where it goes, any resolution) with its weight (`regions`).

    Locking: `local` locks the concept token's key to its superclass's; `global` makes every K read the prompt
    encoded with the superclass word; `context` makes every K and V read it, the concept living only in its own
    token's value target (what composes two concepts in one prompt). None: the lock the concept was trained with."""

    concept: Concept
    beta: float = GATE["beta"].default
    tau: float = GATE["tau"].default
    strength: float = GATE["strength"].default
    lock: str | None = None
    region: Any = field(default=None, compare=False)
    region_weight: float = GATE["region_weight"].default

    def __post_init__(self) -> None:
        if not isinstance(self.concept, Concept):
            raise PerfusionError(f"expected a Perfusion concept, got {type(self.concept).__name__}: give a concept "
                                 "loaded from its file or trained")
        checked = check_gate(f"concept '{self.concept.name}'", beta=self.beta, tau=self.tau, strength=self.strength,
                             region_weight=self.region_weight)
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        if self.lock is None:
            object.__setattr__(self, "lock", self.concept.trained_lock)
        if self.lock not in LOCKS:
            raise PerfusionError(f"lock must be one of {LOCKS}, got {self.lock!r}")
        if self.lock != "local" and not self.concept.key_locked:
            raise PerfusionError(f"concept '{self.concept.name}' has trained keys, so it cannot lock them globally: "
                                 "use lock 'local'")
        if self.region is not None:
            object.__setattr__(self, "region", as_region(self.region, self.concept.name))

    @property
    def settings(self) -> GateSettings:
        return GateSettings(self.beta, self.tau, self.strength)


UseLike = ConceptUse | Concept | tuple


def as_uses(items: Iterable[UseLike]) -> list[ConceptUse]:
    """Normalise `ConceptUse`, `Concept` or `(concept, beta, tau[, strength[, lock]])` items, in the order of their
    words, so that the joint patch of a set of concepts is the same, bit for bit, in whatever order they come.

    A concept word given twice keeps its last setting (applying a concept again replaces it), with a warning where
    the two settings differ.
    """
    by_word: dict[str, ConceptUse] = {}
    for item in items:
        if isinstance(item, ConceptUse):
            use = item
        else:
            use = ConceptUse(item) if isinstance(item, Concept) else ConceptUse(*item)
        earlier = by_word.get(use.concept.word)
        if earlier is not None and not _same_settings(earlier, use):
            log.warning("concept '%s' is applied twice, with different settings: the later ones (%s) replace the "
                        "earlier (%s)", use.concept.name, _settings(use), _settings(earlier))
        by_word[use.concept.word] = use
    if not by_word:
        raise PerfusionError("no concept to apply: give at least one (concept, beta, tau)")
    return [by_word[word] for word in sorted(by_word)]


def _same_settings(a: ConceptUse, b: ConceptUse) -> bool:
    """The same gate, lock and region (a region's weight counts only with a region)."""
    if (a.beta, a.tau, a.strength, a.lock) != (b.beta, b.tau, b.strength, b.lock):
        return False
    if a.region is None or b.region is None:
        return a.region is b.region
    return a.region_weight == b.region_weight and a.region.shape == b.region.shape and torch.equal(a.region, b.region)


def _settings(use: ConceptUse) -> str:
    region = "none" if use.region is None else f"a mask, weight {use.region_weight:g}"
    return f"β {use.beta:g}, τ {use.tau:g}, strength {use.strength:g}, lock {use.lock}, region {region}"


@dataclass
class LayerPatch:
    """The edit of one cross-attention layer: K and V projections, whether K reads the superclass prompt (V does where
    `value.reads_superclass`), and the concepts' regions (shared by every layer; None when no concept has one)."""

    key: GatedProjection | None
    value: GatedProjection
    key_reads_superclass: bool = False
    painter: RegionPainter | None = None

    @property
    def reads_superclass(self) -> bool:
        """Whether the host must hand this layer the prompt encoded with the superclass words."""
        return self.key_reads_superclass or self.value.reads_superclass


def _joint_projector(uses: Sequence[ConceptUse]) -> JointProjector:
    concepts = [u.concept for u in uses]
    return JointProjector(
        torch.stack([c.i_star for c in concepts]),
        torch.stack([c.v for c in concepts]),
        [u.settings for u in uses],
        names=[c.name for c in concepts],
    )


def check_combinable(uses: Sequence[ConceptUse]) -> None:
    """Refuse concepts that cannot share a projector; log what is allowed but unusual."""
    first = uses[0].concept
    for use in uses[1:]:
        c = use.concept
        encoder = (c.family, c.context_dim, c.text_encoder_layer)
        if encoder != (first.family, first.context_dim, first.text_encoder_layer):
            raise IncompatibleConceptError(
                f"concepts '{first.name}' ({first.family}, width {first.context_dim}, layer "
                f"{first.text_encoder_layer}) and '{c.name}' ({c.family}, width {c.context_dim}, layer "
                f"{c.text_encoder_layer}) were trained for different text encoders and cannot be combined"
            )
    if len({u.concept.c_fingerprint for u in uses}) > 1:
        log.info("concepts were trained against different caption statistics C: their joint projector is oblique")


def build_patch(layers: Sequence[CrossAttentionLayer], uses: Iterable[UseLike]) -> dict[str, LayerPatch]:
    """The joint patch of every layer for `uses`, keyed by canonical layer name.

    The concepts' tensors are used as they are, so a trainer's live tensors carry their gradients.
    """
    uses = as_uses(uses)
    for use in uses:
        check_concept(use.concept, list(layers))
    check_combinable(uses)
    value_projector = _joint_projector(uses)
    local = [j for j, u in enumerate(uses) if u.lock == "local"]
    if len(local) == len(uses):
        key_projector = value_projector
    elif local:
        key_projector = _joint_projector([uses[j] for j in local])
    else:
        key_projector = None  # every concept is globally locked: K reads the superclass prompt unedited
    keyed = [uses[j].concept for j in local]
    painter = RegionPainter(value_projector, [u.region for u in uses], [u.region_weight for u in uses])
    # one context-locked concept makes V read the superclass prompt, where the others' words are superclass words too
    context_locked = any(u.lock == "context" for u in uses)
    return {
        layer.name: LayerPatch(
            key=GatedProjection(key_projector, *_key_targets(keyed, layer)) if key_projector else None,
            value=GatedProjection(value_projector, added_outputs=torch.stack([u.concept.o_v[layer.name] for u in uses]),
                                  reads_superclass=context_locked),
            key_reads_superclass=len(local) < len(uses),
            painter=painter or None,
        )
        for layer in layers
    }


def _key_targets(concepts: Sequence[Concept], layer: CrossAttentionLayer) -> tuple[Tensor | None, Tensor | None]:
    """K's added inputs (`i_super` of key-locked concepts) and added outputs (`o*_K` of trained-key ones),
    each a row per concept with zeros for the others, or None where no concept needs that side."""
    inputs = [c.i_super if c.key_locked else torch.zeros_like(c.i_super) for c in concepts]
    outputs = [c.o_k[layer.name] if c.o_k else c.i_super.new_zeros(layer.k_dim) for c in concepts]
    return (
        torch.stack(inputs) if any(c.key_locked for c in concepts) else None,
        None if all(c.key_locked for c in concepts) else torch.stack(outputs),
    )


def gated_forward(original: Callable[..., Tensor], projection: GatedProjection, seen: dict | None = None,
                  relay: dict | None = None) -> Callable[..., Tensor]:
    """A projection's forward for hosts that patch forwards (ComfyUI, Forge): `original(x, *args, **kwargs)` with the
    gated edit of `projection` around it; with `seen`, each call's prompt is kept as `seen["context"]` (where regions
    find the concepts' tokens). A context-locked projection is handed the superclass prompt, and its gates read the
    prompt from `relay["prompt"]` (`global_lock.set_superclass_keys`)."""

    def forward(x: Tensor, *args, **kwargs) -> Tensor:
        prompt, superclass = x, None
        if projection.reads_superclass:
            prompt, superclass = superclass_input((relay or {}).get("prompt"), x), x
        if seen is not None:
            seen["context"] = prompt
        return projection(lambda y: original(y, *args, **kwargs), prompt, superclass)

    return forward


def _input_of(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["input"]


def _with_input(args: tuple, kwargs: dict, x: Tensor) -> tuple[tuple, dict]:
    if args:
        return (x, *args[1:]), kwargs
    return args, {**kwargs, "input": x}


def superclass_input(superclass_context: Tensor | None, e: Tensor) -> Tensor:
    """What a globally locked K projection reads in place of the prompt `e` (a context-locked V beside it): the
    superclass prompt."""
    if superclass_context is None or superclass_context.shape != e.shape:
        raise PerfusionError(
            "global locking needs the prompt encoded with the superclass word, of the same shape "
            "as the context: call handle.set_superclass_context(...) before sampling"
        )
    return superclass_context.to(e.device, e.dtype)


class PaintedAttention:
    """Regions installed in place: the cross-attention forwards of `layers` (diffusers `Attention` or LDM
    `CrossAttention`) compute their scores with `painter`'s bias, and a UNet pre-hook reads each call's input size
    and noise level. `remove()` restores every forward."""

    def __init__(self, unet: nn.Module, layers: Sequence[CrossAttentionLayer], painter: RegionPainter,
                 alphas_cumprod: Tensor | None = None) -> None:
        self.painter = painter
        self.alphas_cumprod: Tensor | None = None
        if alphas_cumprod is not None:
            self.set_noise_schedule(alphas_cumprod)
        self._step: dict[str, Any] = {}
        self._hook = unet.register_forward_pre_hook(self._record_step, with_kwargs=True)
        self._replaced = [(layer.module, layer.module.__dict__.get("forward")) for layer in layers]
        for layer in layers:
            layer.module.forward = self._forward(layer.module)

    def set_noise_schedule(self, alphas_cumprod: Tensor) -> None:
        self.alphas_cumprod = alphas_cumprod.detach().double().cpu()

    def _record_step(self, _unet: nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs.get("timestep", kwargs.get("timesteps"))
        if self.alphas_cumprod is None:
            raise PerfusionError("regions need the noise schedule: call handle.set_noise_schedule(alphas_cumprod)")
        index = torch.as_tensor(t).detach().round().long().cpu().clamp(0, len(self.alphas_cumprod) - 1)
        alpha = self.alphas_cumprod[index]
        sigma = ((1 - alpha) / alpha).sqrt().float().expand(sample.shape[0])
        self._step.update(input_size=tuple(sample.shape[-2:]), sigma=sigma)

    def _forward(self, module: nn.Module):
        def forward(x: Tensor, *args, **kwargs) -> Tensor:
            context = kwargs.get("encoder_hidden_states", kwargs.get("context", args[0] if args else None))
            if kwargs.get("attention_mask", kwargs.get("mask")) is not None:
                raise PerfusionError("regions cannot be combined with an attention mask on cross-attention")
            context = x if context is None else context
            out = self.painter.attention(module.to_q(x), module.to_k(context), module.to_v(context), module.heads,
                                         context, self._step["input_size"], self._step["sigma"])
            for part in module.to_out:
                out = part(out)
            return out

        return forward

    def remove(self) -> None:
        self._hook.remove()
        for module, own_forward in self._replaced:
            if own_forward is None:
                del module.forward
            else:
                module.forward = own_forward
        self._replaced.clear()

    def __enter__(self) -> PaintedAttention:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


@dataclass
class PatchHandle:
    """Hooks of one installed patch. `remove()` (or leaving a `with` block) restores the model exactly."""

    unet: nn.Module
    layers: list[CrossAttentionLayer]
    patches: dict[str, LayerPatch]
    uses: list[ConceptUse] = field(default_factory=list)  # what `patch_unet` installed
    superclass_context: Tensor | None = None
    _hooks: list = field(default_factory=list)
    _pending: dict[int, list[tuple[GatedProjection, Tensor] | None]] = field(default_factory=dict)
    _painted: PaintedAttention | None = None

    def set_superclass_context(self, context: Tensor | None) -> None:
        """The prompt encoded with each globally locked concept's superclass word (K reads it)."""
        self.superclass_context = context

    def set_noise_schedule(self, alphas_cumprod: Tensor) -> None:
        """The sampler's `ᾱ_t` per training timestep, from which regions read the noise level of each call."""
        if self._painted is not None:
            self._painted.set_noise_schedule(alphas_cumprod)

    def _install(self) -> None:
        for layer in self.layers:
            for side, projection in (("key", layer.to_k), ("value", layer.to_v)):
                self._hooks += [
                    projection.register_forward_pre_hook(self._pre_hook(layer.name, side), with_kwargs=True),
                    projection.register_forward_hook(self._post_hook()),
                ]
        painter = next((p.painter for p in self.patches.values() if p.painter is not None), None)
        if painter is not None:
            self._painted = PaintedAttention(self.unet, [layer for layer in self.layers if layer.name in self.patches],
                                             painter)

    def _pre_hook(self, name: str, side: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            # The output hook of the same call pops this entry and adds the gated targets.
            pending = self._pending.setdefault(id(module), [])
            patch = self.patches.get(name)
            if patch is None:  # an empty patch leaves the layer as it is
                pending.append(None)
                return None
            e = _input_of(args, kwargs)
            if side == "key" and patch.key_reads_superclass:
                e = superclass_input(self.superclass_context, e)
            projection: GatedProjection | None = getattr(patch, side)
            if projection is None:
                pending.append(None)
            else:
                superclass = superclass_input(self.superclass_context, e) if projection.reads_superclass else None
                e, weighted_gates = projection.rewrite_input(e, superclass)
                pending.append((projection, weighted_gates))
            return _with_input(args, kwargs, e)

        return hook

    def _post_hook(self):
        def hook(module: nn.Module, _args: tuple, out: Tensor) -> Tensor:
            entry = self._pending[id(module)].pop()
            return out if entry is None else entry[0].finish_output(out, entry[1])

        return hook

    def remove(self) -> None:
        """Remove every hook; calling it again does nothing."""
        for h in self._hooks:
            h.remove()
        if self._painted is not None:
            self._painted.remove()
            self._painted = None
        self._hooks.clear()
        self._pending.clear()
        if getattr(self.unet, "_perfusion_handle", None) is self:
            del self.unet._perfusion_handle

    @property
    def active(self) -> bool:
        return bool(self._hooks)

    def __enter__(self) -> PatchHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def install_patch(unet: nn.Module, layers: list[CrossAttentionLayer], patches: dict[str, LayerPatch]) -> PatchHandle:
    """Install `patches` into `unet` in place (replacing a perfusion patch already there)."""
    previous = getattr(unet, "_perfusion_handle", None)
    if previous is not None:
        previous.remove()
    handle = PatchHandle(unet, layers, patches)
    handle._install()
    unet._perfusion_handle = handle
    return handle


def patch_unet(unet: nn.Module, concepts: Iterable[UseLike]) -> PatchHandle:
    """Patch every cross-attention `to_k`/`to_v` of `unet` with the joint edit of `concepts`.

    `concepts` holds `ConceptUse`s or `(concept, beta, tau[, strength[, lock]])` tuples. Patching an
    already patched UNet replaces the earlier patch. Returns a handle; `handle.remove()` restores it.
    """
    layers, uses = cross_attention_layers(unet), as_uses(concepts)
    handle = install_patch(unet, layers, build_patch(layers, uses))
    handle.uses = uses
    return handle


def superclass_words(uses: Iterable[ConceptUse]) -> dict[str, str]:
    """The word of each concept locked otherwise than locally, mapped to its superclass word: what the prompt read
    with the superclass words (`PatchHandle.set_superclass_context`) replaces."""
    return {u.concept.word: u.concept.superclass for u in uses if u.lock != "local"}
