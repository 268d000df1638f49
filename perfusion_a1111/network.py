"""`<perfusion:...>` as an A1111 extra network: resolve the concepts, register their words, patch the UNet.

On A1111 the patch is `perfusion_core.patch_unet` (forward hooks on every `attn2.to_k`/`to_v`; the host's
own projection still runs, so Lora and fp8 casting apply). A1111 calls `deactivate` only when sampling
succeeds, so every `activate` first removes what the previous one installed. On Forge and reForge, `activate`
builds the patch and records it on `p`; `forge.patch_clone` installs it in the per-batch UNet clone.
`lock=global` adds `global_lock.SuperclassContexts` on every host.
An error (unknown name, wrong base model, concepts that cannot be combined) makes the next UNet call raise
it, so the generation stops with the message instead of silently running without the concept: the web UI
only logs an exception raised by `activate` or by a script.
"""

from __future__ import annotations

from dataclasses import dataclass

from modules import errors, extra_networks
from torch import nn

from perfusion_core import (
    Concept,
    ConceptUse,
    PatchHandle,
    PerfusionError,
    build_patch,
    check_concept,
    cross_attention_layers,
    patch_unet,
)
from perfusion_core.layers import check_text_encoder_layer
from perfusion_core.patch import superclass_words

from . import backend
from .forge import PATCHES_ATTRIBUTE
from .global_lock import SuperclassContexts
from .library import ConceptFile, ConceptLibrary
from .tags import TAG, ConceptRequest, format_hashes, format_infotext, parse_hashes, parse_request


@dataclass(frozen=True)
class Resolved:
    """A request with the file it names and the loaded concept."""

    request: ConceptRequest
    file: ConceptFile
    concept: Concept
    region: object = None  # a named region or a mask (`ConceptLibrary.region`)

    @property
    def use(self) -> ConceptUse:
        r = self.request
        return ConceptUse(self.concept, r.beta, r.tau, r.strength, r.lock, self.region, r.region_weight)


class _RaiseOnCall:
    """A forward pre-hook that stops the generation with `error` the first time the UNet runs."""

    def __init__(self, error: PerfusionError) -> None:
        self.error = error

    def __call__(self, module: nn.Module, args: tuple) -> None:
        raise self.error


class PerfusionNetwork(extra_networks.ExtraNetwork):
    def __init__(self, library: ConceptLibrary) -> None:
        super().__init__(TAG)
        self.library = library
        self.handle: PatchHandle | None = None
        self.global_lock = SuperclassContexts()
        self.error_hook = None
        self.words: dict[str, tuple[Concept, list]] = {}  # word -> (concept, embeddings registered for it)

    def resolve(self, params_list: list, sd_model) -> list[Resolved]:
        """Parse, find and load every requested concept and check it fits the model."""
        resolved = []
        for params in params_list:
            request = parse_request([str(i) for i in params.positional], params.named)
            file = self.library.find(request.name)
            concept = self.library.load(file)
            region = None if request.region is None else self.library.region(request.region)
            resolved.append(Resolved(request, file, concept, region))
        if resolved:
            layers = cross_attention_layers(backend.unet_of(sd_model))
            layer = backend.text_encoder_layer(sd_model)
            for r in resolved:
                check_concept(r.concept, layers)
                check_text_encoder_layer(r.concept, layer)
                backend.check_embeddings(r.concept, sd_model)
        return resolved

    def activate(self, p, params_list: list) -> None:
        self.remove_patch()
        sd_model = getattr(p, "sd_model", None)
        if sd_model is None:  # A1111 activates with a bare `p` while loading a model
            return
        setattr(p, PATCHES_ATTRIBUTE, {})
        try:
            resolved = self.resolve(params_list, sd_model)
        except PerfusionError as error:
            self.fail(sd_model, error)
            return
        self.set_words(sd_model, resolved)
        if not resolved:
            return
        self.record_infotext(p, resolved)
        unet = backend.unet_of(sd_model)
        try:
            uses = [r.use for r in resolved]
            if backend.is_forge(sd_model):
                setattr(p, PATCHES_ATTRIBUTE, build_patch(cross_attention_layers(unet), uses))
            else:
                self.handle = patch_unet(unet, uses)
                if any(use.region is not None for use in uses):
                    self.handle.set_noise_schedule(sd_model.alphas_cumprod)
        except PerfusionError as error:
            self.fail(sd_model, error)
            return
        global_words = superclass_words(uses)
        if global_words:
            self.global_lock.install(sd_model, unet, self.handle, global_words, backend.key_context(sd_model))

    def fail(self, sd_model, error: PerfusionError) -> None:
        """Undo this activation and make the coming UNet call raise `error`."""
        self.remove_patch()
        self.set_words(sd_model, [])
        self.error_hook = backend.unet_of(sd_model).register_forward_pre_hook(_RaiseOnCall(error))
        errors.display(error, "perfusion")

    def deactivate(self, p) -> None:
        self.unload(getattr(p, "sd_model", None))

    def unload(self, sd_model) -> None:
        """Remove the hooks and the registered words (after a generation, and before scripts reload)."""
        self.remove_patch()
        if sd_model is not None:
            self.set_words(sd_model, [])

    def set_words(self, sd_model, resolved: list[Resolved]) -> None:
        """Register the requested concepts' words (again: A1111 clears its embeddings on reload) and
        unregister the others; forget cached conditioning when a word's embedding changes."""
        wanted = {r.concept.word: r for r in resolved}
        changed = False
        for word, (concept, registered) in list(self.words.items()):
            if word not in wanted or wanted[word].concept is not concept:
                backend.unregister_word(sd_model, word, registered)
                del self.words[word]
                changed = True
        for word, r in wanted.items():
            registered = backend.register_word(sd_model, word, r.concept.embeddings, str(r.file.path))
            changed |= word not in self.words
            self.words[word] = (r.concept, registered)
        if changed:
            backend.reset_cond_cache()

    @staticmethod
    def record_infotext(p, resolved: list[Resolved]) -> None:
        params = p.extra_generation_params
        hashes = {r.request.name: r.file.shorthash for r in resolved}
        if getattr(p, "is_hr_pass", False) and "Perfusion" in params:
            if params["Perfusion"] != format_infotext(r.request for r in resolved):
                params["Perfusion hires"] = format_infotext(r.request for r in resolved)
            hashes = {**hashes, **parse_hashes(params.get("Perfusion hashes", ""))}
        else:
            params["Perfusion"] = format_infotext(r.request for r in resolved)
        params["Perfusion hashes"] = format_hashes(hashes)

    def remove_patch(self) -> None:
        """Remove the hooks of the last activation."""
        self.global_lock.remove()
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        if self.error_hook is not None:
            self.error_hook.remove()
            self.error_hook = None
