"""The ComfyUI `TrainingHost`: a MODEL, CLIP and VAE as ComfyUI loaded them, driven for the core `Trainer`.

Prompts are encoded through ComfyUI's own CLIP path (clip skip, emphasis, the trigger word entering as
an embedding token like a textual inversion); the UNet is called through the model's `apply_model`
with ComfyUI's sigma convention; previews are sampled with ComfyUI's sampler.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import comfy.clip_model
import comfy.model_management
import comfy.model_sampling
import comfy.sample
import torch
from comfy_extras.nodes_train import find_all_highest_child_module_with_forward, patch, unpatch
from torch import Tensor

from ..perfusion_core import TrainingError
from ..perfusion_core.differentiable import checkpointed, normal_tensors
from ..perfusion_core.layers import cross_attention_layers, model_family
from ..perfusion_core.objective import DiffusionObjective
from ..perfusion_core.second_moment import Progress, SecondMoment, host_second_moment
from ..perfusion_core.train import Conditioning
from ..perfusion_core.words import in_vocabulary, known_word, superclass_token
from .text import encoders, text_encoder_layer, with_concepts

PREVIEW_STEPS = 20
PREVIEW_CFG = 5.0
CAPTION_BATCH = 64


def _clip_layer_forward(layer, x: Tensor, mask=None, optimized_attention=None) -> Tensor:
    """`CLIPLayer.forward` without its in-place residual adds, which autograd cannot differentiate through."""
    x = x + layer.self_attn(layer.layer_norm1(x), mask, optimized_attention)
    return x + layer.mlp(layer.layer_norm2(x))


def trainable_clip(patcher):
    """A clone of a CLIP patcher that autograd can differentiate, through per-clone patches only: each layer adds
    its residuals out of place and is recomputed in the backward pass, so the float32 copies that ComfyUI's cast
    path makes of fp16-stored weights are never held for it."""
    clone = patcher.clone()
    for name, module in clone.model.named_modules():
        if isinstance(module, comfy.clip_model.CLIPLayer):
            clone.add_object_patch(f"{name}.forward", checkpointed(functools.partial(_clip_layer_forward, module)))
    return clone


@dataclass
class TrainingWord:
    """The trigger word during training: what `nodes.text` needs of a concept, with live embeddings."""

    word: str
    embeddings: list[Tensor]
    family: str

    @property
    def name(self) -> str:
        return self.word


def objective_for(model_sampling) -> DiffusionObjective:
    """The discrete ε / v objective of a ComfyUI `model_sampling` (ᾱ = 1 / (1 + σ²))."""
    ms = comfy.model_sampling
    if not isinstance(model_sampling, ms.ModelSamplingDiscrete) or isinstance(
            model_sampling, (ms.EDM, ms.X0, ms.CONST)):
        raise TrainingError(
            f"this model's sampling ({type(model_sampling).__name__}) is not a discrete ε or v-prediction "
            "schedule: Perfusion training supports SD1.x, SD2.x and SDXL checkpoints"
        )
    prediction = "v_prediction" if isinstance(model_sampling, ms.V_PREDICTION) else "epsilon"
    sigmas = model_sampling.sigmas.detach().double().cpu()
    return DiffusionObjective(1 / (1 + sigmas**2), prediction)


class ComfyHost:
    """Drives a ComfyUI `ModelPatcher` (a clone), `CLIP` and `VAE` for the core `Trainer`."""

    def __init__(self, model, clip, vae, captions: Sequence[str], cache_dir: str | None = None) -> None:
        self.model, self.vae = model.clone(), vae
        self.clip = clip.clone()
        self.clip.patcher = trainable_clip(clip.patcher)
        self.base = model.model
        self.unet = self.base.diffusion_model
        layers = cross_attention_layers(self.unet)
        self.family = model_family(layers)
        self._context_dim = layers[0].context_dim
        self.text_encoder_layer = text_encoder_layer(clip)
        self.objective = objective_for(self.base.model_sampling)
        self.captions, self.cache_dir = list(captions), cache_dir
        self.device = model.load_device
        # the model's own compute dtype (fp16 trains with the loss scaler, bf16 as is): another one would make ComfyUI
        # cast every weight per call and hold the copies for the backward pass
        self.compute_dtype = model.get_model_object("manual_cast_dtype") or self.base.get_dtype()  # a per-clone patch
        self.word: str | None = None
        self._word: TrainingWord | None = None
        self._superclass_ids: list[int] = []
        self._latent_size: tuple[int, int] = (64, 64)
        self._training = False

    def load(self) -> None:
        """Load the UNet and the text encoder fully, the rest unloaded, as ComfyUI's own trainer does."""
        self.base.requires_grad_(False)
        self._loaded(memory_required=1e20)

    def _loaded(self, memory_required: float = 0) -> None:
        """Keep the UNet and the text encoder fully loaded (a preview's VAE may have pushed them out), with weights
        that autograd can save for the backward pass as they are, without per-call copies."""
        comfy.model_management.load_models_gpu([self.model, self.clip.patcher], memory_required=memory_required,
                                               force_full_load=True)
        normal_tensors(self.unet)
        normal_tensors(self.clip.cond_stage_model)

    # -- words -------------------------------------------------------------------------------------------

    def prepare_words(self, word: str, superclass: str) -> list[Tensor]:
        parts = encoders(self.clip)
        self._superclass_ids = superclass_token(superclass, lambda text: [t.tokenizer(text)["input_ids"][1:-1]
                                                                          for _, t, _ in parts])
        embeddings = []
        for (_, tokenizer, encoder), token in zip(parts, self._superclass_ids, strict=True):
            if in_vocabulary(tokenizer.tokenizer, word):
                raise known_word(word)
            table = encoder.transformer.get_input_embeddings().weight
            embeddings.append(table[token].detach().float().cpu().clone())
        self.word = word
        self._word = TrainingWord(word, [torch.zeros_like(e) for e in embeddings], self.family)
        self.clip = with_concepts(self.clip, {word: self._word}, {})  # one CLIP (one loaded patcher) for the run
        return embeddings

    def _tokens(self, prompt: str) -> dict:
        tokens = self.clip.tokenize(prompt)
        if any(len(chunks) != 1 for chunks in tokens.values()):
            raise TrainingError(f"the training prompt {prompt!r} is longer than 75 tokens: use shorter templates")
        return tokens

    def _encode_chunks(self, token_dicts: list[dict]) -> Tensor:
        """Every 77-token chunk of every tokenized prompt in one batch: `(1, 77 × chunks, d)`."""
        merged: dict[str, list] = {}
        for tokens in token_dicts:
            for name, chunks in tokens.items():
                merged.setdefault(name, []).extend(chunks)
        return self.clip.encode_from_tokens(merged)

    def encode(self, prompts: list[str], embeddings: list[Tensor] | None) -> Conditioning:
        """Prompts encoded as sampling encodes them; the trigger word reads `embeddings` (None: never used)."""
        if embeddings is not None:
            self._word.embeddings = embeddings
            if torch.is_grad_enabled():
                # once per training micro-step (the trainer encodes, then predicts); the first also unloads the VAE,
                # whose latents are cached
                self._loaded(memory_required=0 if self._training else 1e20)
                self._training = True
        tokens = [self._tokens(p) for p in prompts]
        context = self._encode_chunks(tokens).reshape(len(prompts), -1, self._context_dim).to(self.device)
        extra = {}
        if self.base.adm_channels:  # SDXL: the pooled output of each prompt, as sampling passes it
            with torch.no_grad():
                pooled = [self.clip.encode_from_tokens(t, return_pooled=True)[1] for t in tokens]
            extra["pooled_output"] = torch.cat(pooled).to(self.device)
        return Conditioning(context, extra)

    def word_mask(self, prompts: list[str], word: str) -> Tensor:
        is_trigger = word == self.word
        superclass = self._superclass_ids[0] if self._superclass_ids else None
        rows = []
        for prompt in prompts:
            chunk = next(iter(self._tokens(prompt).values()))[0]
            rows.append([torch.is_tensor(entry[0]) if is_trigger else entry[0] == superclass for entry in chunk])
        mask = torch.tensor(rows, device=self.device)
        if not mask.any(dim=1).all():
            raise TrainingError(f"a training prompt lacks the word {word!r}: {prompts}")
        return mask

    # -- images and the model ----------------------------------------------------------------------------

    def encode_images(self, images: Tensor) -> Tensor:
        latents = self.vae.encode(images.movedim(1, -1))
        self._latent_size = tuple(latents.shape[-2:])
        return self.base.process_latent_in(latents.to(self.device))

    def predict(self, noisy: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        """The raw ε / v output, through `apply_model` (which takes `x0 + σ ε` and returns the denoised x0)."""
        sigma = self.base.model_sampling.sigmas.to(self.device)[t.to(self.device)].float()
        scale = (1 + sigma**2).sqrt().view(-1, 1, 1, 1)
        x = noisy.to(self.device) * scale
        conds = self.base.extra_conds(cross_attn=cond.context, pooled_output=cond.extra.get("pooled_output"),
                                      noise=x, device=self.device, width=x.shape[-1] * 8, height=x.shape[-2] * 8)
        kwargs = {name: c.process_cond(batch_size=x.shape[0], device=self.device).cond for name, c in conds.items()}
        options = dict(self.model.model_options.get("transformer_options", {}))
        denoised = self.base.apply_model(x, sigma, transformer_options=options, **kwargs)
        s = sigma.view(-1, 1, 1, 1)
        if self.objective.prediction == "epsilon":
            return (x - denoised) / s
        return (x / scale**2 - denoised) * scale / s

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        if enabled:
            for module in find_all_highest_child_module_with_forward(self.unet):
                patch(module)
        else:
            for module in self.unet.modules():
                unpatch(module)

    def second_moment(self, progress: Progress | None) -> SecondMoment:
        return host_second_moment(self._caption_contexts, [encoder for _, _, encoder in encoders(self.clip)],
                                  self.text_encoder_layer, self.captions, progress, CAPTION_BATCH, self.cache_dir)

    def _caption_contexts(self, captions: list[str]) -> Tensor:
        return self._encode_chunks([self.clip.tokenize(caption) for caption in captions])

    # -- previews ----------------------------------------------------------------------------------------

    def sample(self, prompts: list[str], seeds: list[int], embeddings: list[Tensor]) -> Tensor:
        cond = self.encode(prompts, embeddings)
        uncond = self.encode([""], None)
        negative = [[uncond.context, dict(uncond.extra)]]
        channels = self.base.latent_format.latent_channels
        images = []
        for k, seed in enumerate(seeds):
            positive = [[cond.context[k:k + 1], {name: v[k:k + 1] for name, v in cond.extra.items()}]]
            latent = torch.zeros(1, channels, *self._latent_size)
            noise = comfy.sample.prepare_noise(latent, seed)
            samples = comfy.sample.sample(self.model, noise, PREVIEW_STEPS, PREVIEW_CFG, "euler", "normal",
                                          positive, negative, latent, seed=seed, disable_pbar=True)
            images.append(self.vae.decode(samples))
        return torch.cat(images).movedim(-1, 1).float().clamp(0, 1)
