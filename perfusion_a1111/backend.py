"""What the glue needs of the loaded model, on A1111, reForge and Forge: its UNet, its text-encoder layer,
and the embedding database where a concept word is registered."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from modules import devices, shared
from torch import Tensor, nn

from perfusion_core import Concept, PerfusionError
from perfusion_core.layers import check_embedding_widths, skip_layer_name


def is_forge(sd_model) -> bool:
    """Forge and reForge sample through a per-batch clone of `forge_objects.unet`."""
    return hasattr(sd_model, "forge_objects")


def is_sdxl(sd_model) -> bool:
    return getattr(sd_model, "is_sdxl", False)


def has_cond_stage_model(sd_model) -> bool:
    """A1111 and reForge keep a `cond_stage_model` (the text encoder training drives); Forge has none."""
    return getattr(sd_model, "cond_stage_model", None) is not None


def unet_of(sd_model) -> nn.Module:
    """The diffusion model whose `attn2.to_k`/`to_v` receive the context."""
    if is_forge(sd_model):
        return sd_model.forge_objects.unet.model.diffusion_model
    model = getattr(sd_model, "model", None)
    unet = getattr(model, "diffusion_model", None)
    if unet is None:
        raise PerfusionError(f"{type(sd_model).__name__} has no model.diffusion_model: unsupported model type")
    return unet


def key_context(sd_model) -> Callable[[Tensor], Tensor] | None:
    """What the model's cross-attention does to a context before K reads it, where Perfusion's globally locked K
    must do the same to the superclass prompt: on A1111, the K side of the loaded hypernetworks (every attention
    forward of `sd_hijack_optimizations` runs them on the context); None on Forge and reForge, whose attention
    transforms K's context through the UNet clone's attn2 patches, where K's superclass prompt goes first."""
    if is_forge(sd_model):
        return None
    from modules.hypernetworks import hypernetwork

    return lambda context: hypernetwork.apply_hypernetworks(shared.loaded_hypernetworks, context)[0]


def text_encoder_layer(sd_model) -> str:
    """The text-encoder layer this model's cross-attention reads under the current settings."""
    skip = int(getattr(shared.opts, "CLIP_stop_at_last_layers", 1) or 1)
    if is_sdxl(sd_model):
        clip_l_follows_skip = getattr(shared.opts, "sdxl_clip_l_skip", False)
        return "penultimate" if not clip_l_follows_skip or skip == 2 else f"clip_l {skip_layer_name(skip)}"
    if getattr(sd_model, "is_sd2", False):
        return "penultimate"  # SD2's OpenCLIP layer comes from the model config, not from CLIP skip
    return skip_layer_name(skip)


def text_models(sd_model) -> list:
    """The web UI's text-encoder wrappers, one per text encoder: Forge's engines; A1111's and reForge's SD1/SD2 one,
    or SDXL's CLIP-L and OpenCLIP-G (the conditioner's embedders that read text; the others embed image sizes)."""
    if not has_cond_stage_model(sd_model):
        return forge_engines(sd_model)
    encoder = sd_model.cond_stage_model
    return [m for m in getattr(encoder, "embedders", [encoder]) if hasattr(m, "encode_embedding_init_text")]


def forge_token_table(engine) -> Tensor:
    """The input-embedding table of one of Forge's text-processing engines, read directly as Forge's training reads
    it."""
    return engine.text_encoder.transformer.text_model.embeddings.token_embedding.wrapped.weight


def check_embeddings(concept: Concept, sd_model) -> None:
    """Refuse a concept whose word embeddings do not fit this model's text encoders."""
    models = text_models(sd_model)
    if not has_cond_stage_model(sd_model):  # Forge
        widths = [int(forge_token_table(engine).shape[-1]) for engine in models]
    else:
        with torch.no_grad():
            widths = [int(model.encode_embedding_init_text(",", 1).shape[-1]) for model in models]
    check_embedding_widths(concept, widths, "this model")


def _embedding_db():
    from modules import sd_hijack

    return getattr(sd_hijack.model_hijack, "embedding_db", None)


def forge_engines(sd_model) -> list:
    """Forge's text-processing engines: one per text encoder."""
    engines = [getattr(sd_model, n, None) for n in ("text_processing_engine", "text_processing_engine_l",
                                                   "text_processing_engine_g")]
    return [e for e in engines if e is not None]


def register_word(sd_model, word: str, vectors: Sequence[Tensor], filename: str) -> list:
    """Make `word` stand for one token with `vectors` (one per text encoder; gradients flow through them).

    Returns the registered embedding objects, to unregister exactly those later.
    """
    vecs = [v.to(devices.device, torch.float32)[None] for v in vectors]
    db = _embedding_db()
    if db is not None:  # A1111 and reForge
        from modules.textual_inversion.textual_inversion import Embedding

        embedding = Embedding(vecs[0] if len(vecs) == 1 else {"clip_l": vecs[0], "clip_g": vecs[1]}, word)
        embedding.vectors, embedding.shape, embedding.filename = 1, sum(v.shape[-1] for v in vecs), filename
        db.register_embedding(embedding, sd_model)
        return [embedding]
    from backend.text_processing.textual_inversion import Embedding  # Forge

    registered = []
    for engine, vec in zip(forge_engines(sd_model), vecs, strict=True):
        embedding = Embedding(vec, word)
        embedding.vectors, embedding.shape, embedding.filename = 1, vec.shape[-1], filename
        engine.embeddings.register_embedding(embedding)
        registered.append(embedding)
    return registered


def unregister_word(sd_model, word: str, registered: list) -> None:
    """Remove `word` from the embedding database(s) if it is still one of `registered` there."""
    db = _embedding_db()
    if db is not None:
        if db.word_embeddings.get(word) in registered:
            db.register_embedding_by_name(None, sd_model, word)
        return
    for engine in forge_engines(sd_model):
        if engine.embeddings.word_embeddings.get(word) in registered:
            engine.embeddings.register_embedding_by_name(None, word)


def reset_cond_cache() -> None:
    """Forget cached prompt conditioning, computed with a concept word's former embedding."""
    from modules.processing import StableDiffusionProcessing

    # in place: every processing object holds references to these two class-level lists
    StableDiffusionProcessing.cached_c[:] = [None, None]
    StableDiffusionProcessing.cached_uc[:] = [None, None]
