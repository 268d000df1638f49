"""Perfusion concepts in a diffusers Stable Diffusion pipeline (SD1, SD2, SDXL): load, re-gate, unload.

`load_perfusion` registers the trigger word in the pipeline's tokenizer(s) and text encoder(s) with diffusers' own
textual-inversion loader, installs the joint patch on `pipe.unet` (`patch_unet`) and wraps the pipeline's
`encode_prompt`: the wrapper checks the call's `clip_skip` against the concepts' text-encoder layer and, for globally
locked concepts, encodes the prompt a second time with each trigger word replaced by its superclass word, which a
UNet pre-hook hands to the K projections. `unload_perfusion` undoes all of it. This module imports no diffusers: it
drives the pipeline it is given.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable

import torch
from torch import nn

from .concept import Concept
from .errors import IncompatibleConceptError, PerfusionError
from .files import load_concept
from .global_lock import SuperclassTwins
from .knobs import GATE
from .layers import check_concept, check_embedding_widths, cross_attention_layers, encoded_layer, model_family
from .patch import ConceptUse, PatchHandle, check_combinable, patch_unet, superclass_words
from .words import in_vocabulary, to_superclass
from .wrapping import MethodWrap

STATE = "_perfusion"  # the pipeline attribute that holds what load_perfusion attached
PROMPTS = ("prompt", "prompt_2", "negative_prompt", "negative_prompt_2")  # encode_prompt's text arguments
NEEDED = ("unet", "encode_prompt", "load_textual_inversion", "unload_textual_inversion")


@dataclasses.dataclass
class _TextEncoder:
    tokenizer: object
    model: nn.Module
    trainable: bool  # requires_grad of the embedding table, which diffusers' unloading sets anew


class _PipelineConcepts:
    """The concepts loaded into one pipeline and everything installed for them (`pipe._perfusion`)."""

    def __init__(self, pipe) -> None:
        missing = [name for name in NEEDED if getattr(pipe, name, None) is None]
        if missing:
            raise PerfusionError(f"{type(pipe).__name__} has no {', '.join(missing)}: perfusion loads into Stable "
                                 "Diffusion pipelines (StableDiffusionPipeline, StableDiffusionXLPipeline, ...)")
        self.pipe = pipe
        self.layers = cross_attention_layers(pipe.unet)
        self.family = model_family(self.layers)
        pairs = [(getattr(pipe, f"tokenizer{s}", None), getattr(pipe, f"text_encoder{s}", None)) for s in ("", "_2")]
        self.encoders = [_TextEncoder(tokenizer, model, model.get_input_embeddings().weight.requires_grad)
                         for tokenizer, model in pairs if tokenizer is not None and model is not None]
        if not self.encoders:
            raise PerfusionError(f"{type(pipe).__name__} has no tokenizer and text encoder for the trigger word")
        self.uses: dict[str, ConceptUse] = {}
        self.clip_skip = 0  # what the concepts' text-encoder layer needs
        self.twins = SuperclassTwins()
        self.handle: PatchHandle | None = None
        self._unet_hook = None
        self._encode_prompt: MethodWrap | None = None

    # -- concepts ----------------------------------------------------------------------------------------

    def add(self, use: ConceptUse) -> None:
        """Check `use` fits the pipeline and the other concepts, then register its word and re-patch."""
        concept = use.concept
        check_concept(concept, self.layers)
        self._check_embeddings(concept)
        clip_skip = self._clip_skip_for(concept)
        if use.region is not None:
            self._noise_schedule()
        check_combinable([*(u for word, u in self.uses.items() if word != concept.word), use])
        for encoder in self.encoders:
            if concept.word not in self.uses and in_vocabulary(encoder.tokenizer, concept.word):
                raise PerfusionError(
                    f"the concept word {concept.word!r} is already a word of this pipeline's tokenizer (or another "
                    "textual inversion's): unload that textual inversion, or use a concept with a made-up word"
                )
        self._register(concept)
        self.uses.pop(concept.word, None)
        self.uses[concept.word] = use
        self.clip_skip = clip_skip
        self.apply()

    def find(self, name_or_word: str) -> ConceptUse:
        for use in self.uses.values():
            if name_or_word in (use.concept.word, use.concept.name):
                return use
        raise PerfusionError(f"no concept {name_or_word!r} is loaded in this pipeline: loaded are "
                             f"{', '.join(repr(w) for w in self.uses)}")

    def apply(self) -> None:
        """Install the joint patch of the loaded concepts, and the UNet pre-hook where one locks globally or by
        context."""
        uses = list(self.uses.values())
        self.handle = patch_unet(self.pipe.unet, uses)
        if any(use.region is not None for use in uses):
            self.handle.set_noise_schedule(self._noise_schedule())
        locks_globally = bool(superclass_words(uses))
        if locks_globally and self._unet_hook is None:
            self._unet_hook = self.pipe.unet.register_forward_pre_hook(self._before_unet, with_kwargs=True)
        elif not locks_globally and self._unet_hook is not None:
            self._unet_hook.remove()
            self._unet_hook = None

    def _noise_schedule(self) -> torch.Tensor:
        schedule = getattr(self.pipe.scheduler, "alphas_cumprod", None)
        if schedule is None:
            raise PerfusionError(f"regions read the noise level from the scheduler's alphas_cumprod, which "
                                 f"{type(self.pipe.scheduler).__name__} lacks: use a DDPM-family scheduler")
        return schedule

    def _check_embeddings(self, concept: Concept) -> None:
        widths = [encoder.model.get_input_embeddings().embedding_dim for encoder in self.encoders]
        check_embedding_widths(concept, widths, "this pipeline")

    def _clip_skip_for(self, concept: Concept) -> int:
        models = [encoder.model for encoder in self.encoders]
        for clip_skip in range(models[0].config.num_hidden_layers):
            if encoded_layer(self.family, models, clip_skip) == concept.text_encoder_layer:
                return clip_skip
        raise IncompatibleConceptError(
            f"concept '{concept.name}' was trained on text-encoder layer '{concept.text_encoder_layer}', which this "
            f"{self.family} pipeline cannot read (it reads '{encoded_layer(self.family, models)}', and earlier layers "
            "with clip_skip): use a concept trained for this pipeline's model"
        )

    # -- words -------------------------------------------------------------------------------------------

    def _register(self, concept: Concept) -> None:
        """Make the concept word a token of every tokenizer, reading the concept's embedding (CLIP-L first)."""
        for encoder, embedding in zip(self.encoders, concept.embeddings, strict=True):
            if concept.word in self.uses:  # loaded again: the new embedding replaces the old
                self._unregister(encoder, [concept.word])
            table = encoder.model.get_input_embeddings().weight
            self.pipe.load_textual_inversion(embedding.to(table.device, table.dtype), token=concept.word,
                                             tokenizer=encoder.tokenizer, text_encoder=encoder.model)

    def _unregister(self, encoder: _TextEncoder, words: list[str]) -> None:
        self.pipe.unload_textual_inversion(tokens=words, tokenizer=encoder.tokenizer, text_encoder=encoder.model)
        # diffusers' unloading leaves these as its loading set them
        table = encoder.model.get_input_embeddings()
        table.weight.requires_grad_(encoder.trainable)
        encoder.model.config.vocab_size = table.num_embeddings
        redo_decode = getattr(encoder.tokenizer, "_wrap_decode_method_backend_tokenizer", None)
        if redo_decode is not None:  # CLIP's tokenizer patches its backend's decode; unloading rebuilt the backend
            redo_decode()

    # -- prompts -----------------------------------------------------------------------------------------

    def attach(self) -> None:
        """Attach to the pipeline: `pipe._perfusion`, and the `encode_prompt` wrapper."""
        self._encode_prompt = MethodWrap(self.pipe, "encode_prompt", self._encoding)
        setattr(self.pipe, STATE, self)

    def _encoding(self, encode: Callable) -> Callable:
        signature = inspect.signature(encode)

        def encode_prompt(*args, **kwargs):
            call = signature.bind(*args, **kwargs)
            prompts = {k: v for k, v in call.arguments.items() if k in PROMPTS and v is not None}
            if not prompts:  # embeddings given: nothing is encoded here
                return encode(*args, **kwargs)
            self._check_clip_skip(call.arguments.get("clip_skip"))
            encoded = encode(*args, **kwargs)
            words = superclass_words(self.uses.values())
            if words:
                call.arguments.update({k: [to_superclass(p, words) for p in v] if isinstance(v, list)
                                       else to_superclass(v, words) for k, v in prompts.items()})
                with torch.no_grad():
                    twins = encode(*call.args, **call.kwargs)
                for rows, twin_rows in zip(encoded[:2], twins[:2], strict=True):  # the prompt's and the negative's
                    if rows is not None:
                        self.twins.keep(rows, twin_rows)
            return encoded

        return encode_prompt

    def _check_clip_skip(self, clip_skip: int | None) -> None:
        if (clip_skip or 0) != self.clip_skip:
            concept = next(iter(self.uses.values())).concept
            models = [encoder.model for encoder in self.encoders]
            raise IncompatibleConceptError(
                f"concept '{concept.name}' was trained on text-encoder layer '{concept.text_encoder_layer}' but "
                f"this call reads '{encoded_layer(self.family, models, clip_skip)}': call the pipeline with "
                f"clip_skip={self.clip_skip or None}"
            )

    def _before_unet(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        context = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        self.handle.set_superclass_context(None if context is None else self.twins.context(context))

    # -- unloading ---------------------------------------------------------------------------------------

    def remove(self) -> None:
        """Remove the patch, the hooks, the wrapper and every registered word."""
        self.handle.remove()
        if self._unet_hook is not None:
            self._unet_hook.remove()
            self._unet_hook = None
        self._encode_prompt.remove()
        for encoder in self.encoders:
            self._unregister(encoder, list(self.uses))
        self.uses.clear()
        delattr(self.pipe, STATE)


def _loaded(pipe) -> _PipelineConcepts:
    state = getattr(pipe, STATE, None)
    if state is None:
        raise PerfusionError("no perfusion concept is loaded in this pipeline: call load_perfusion(pipe, ...) first")
    return state


def load_perfusion(pipe, path_or_concept: str | os.PathLike | Concept, beta: float = GATE["beta"].default,
                   tau: float = GATE["tau"].default, strength: float = GATE["strength"].default,
                   lock: str | None = None, region: torch.Tensor | None = None,
                   region_weight: float = GATE["region_weight"].default) -> Concept:
    """Load a concept (a file, or a `Concept`) into a diffusers SD1/SD2/SDXL pipeline, in place.

    Its trigger word becomes a token of the pipeline's tokenizer(s) and the UNet gets the joint gated rank-1 patch of
    every concept loaded so far; loading a concept word again replaces that concept. `lock="global"` has K read the
    prompt encoded with the superclass word in place of the trigger word, `lock="context"` K and V (the concept then
    lives only in its own token's value: what composes two concepts in one prompt); None, the lock the concept was
    trained with. `region`, an (H, W) mask in [0, 1] of the
    image (any resolution), is where the concept goes: it is kept out of the rest of the image, with strength
    `region_weight` (`perfusion_core.regions`).
    A concept that does not fit the pipeline (family, widths, text-encoder layer) raises `IncompatibleConceptError`
    and changes nothing. Returns the concept.
    """
    concept = path_or_concept if isinstance(path_or_concept, Concept) else load_concept(path_or_concept)
    use = ConceptUse(concept, beta, tau, strength, lock, region, region_weight)
    state = getattr(pipe, STATE, None)
    if state is not None:
        state.add(use)
    else:
        state = _PipelineConcepts(pipe)
        state.add(use)
        state.attach()
    return concept


_KEEP = object()


def set_perfusion(pipe, name_or_word: str, beta: float | None = None, tau: float | None = None,
                  strength: float | None = None, lock: str | None = None, region=_KEEP,
                  region_weight: float | None = None) -> None:
    """Change a loaded concept's gate (β, τ), strength, lock or region without reloading it; `None` keeps a
    setting, except for `region`, where `None` removes the concept's region (leaving it out keeps it)."""
    state = _loaded(pipe)
    use = state.find(name_or_word)
    changes = {"beta": beta, "tau": tau, "strength": strength, "lock": lock, "region_weight": region_weight}
    changes = {k: v for k, v in changes.items() if v is not None} | ({} if region is _KEEP else {"region": region})
    state.uses[use.concept.word] = dataclasses.replace(use, **changes)
    state.apply()


def unload_perfusion(pipe) -> None:
    """Remove every loaded concept: the UNet, the tokenizer(s), the text-encoder embedding table(s) and
    `encode_prompt` are as they were before the first `load_perfusion`. Does nothing where none is loaded."""
    state = getattr(pipe, STATE, None)
    if state is not None:
        state.remove()
