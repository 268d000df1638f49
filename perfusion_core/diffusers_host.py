"""The diffusers host: a diffusers-format model folder (SD1.x, SD2.x, SDXL, or the toy model) as a
`TrainingHost`. Needs diffusers and transformers, imported here only."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from torch import Tensor
from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

from .captions import load_captions
from .errors import PerfusionError, TrainingError
from .layers import cross_attention_layers, encoded_layer, model_family
from .objective import DiffusionObjective
from .patch import PatchHandle, superclass_words
from .precision import resolve_device, resolve_precision
from .second_moment import Progress, SecondMoment, host_second_moment
from .train import Conditioning
from .words import in_vocabulary, known_word, superclass_token, to_superclass


class DiffusersHost:
    """Drives a diffusers model folder for training, previews and `C`.

    The UNet computes in `precision` (`precision.resolve_precision`: auto is bf16 on CUDA where the card has it, else
    fp16, and fp32 on a CPU); the text encoders stay float32 (the word embedding's gradient passes through them), and
    so does the VAE (SDXL's overflows in fp16), which leaves the accelerator once training starts.
    """

    def __init__(
        self,
        model_dir: str | Path,
        device: str | torch.device = "auto",
        captions: Sequence[str] | str | Path | None = None,
        cache_dir: str | Path | None = None,
        sample_steps: int = 20,
        guidance: float = 5.0,
        precision: str = "auto",
    ) -> None:
        root = Path(model_dir)
        if not (root / "unet").is_dir():
            raise PerfusionError(f"{root} is not a diffusers model folder (no unet/): give the folder itself")
        self.device = resolve_device(device)
        self.compute_dtype = resolve_precision(precision, self.device)
        if self.device.type == "cuda" and self.compute_dtype == torch.float32:
            torch.backends.cuda.matmul.allow_tf32 = True  # float32 matmuls on tensor cores
        self.unet = UNet2DConditionModel.from_pretrained(root / "unet", torch_dtype=self.compute_dtype)
        self.unet.to(self.device).eval().requires_grad_(False)
        self.tokenizers = [AutoTokenizer.from_pretrained(root / "tokenizer")]
        self.text_encoders = [CLIPTextModel.from_pretrained(root / "text_encoder", torch_dtype=torch.float32)]
        if (root / "text_encoder_2").is_dir():
            self.tokenizers.append(AutoTokenizer.from_pretrained(root / "tokenizer_2"))
            self.text_encoders.append(
                CLIPTextModelWithProjection.from_pretrained(root / "text_encoder_2", torch_dtype=torch.float32)
            )
        for encoder in self.text_encoders:
            encoder.to(self.device).eval().requires_grad_(False)
        self.vae = None
        if (root / "vae").is_dir():
            from diffusers import AutoencoderKL

            self.vae = AutoencoderKL.from_pretrained(root / "vae", torch_dtype=torch.float32)
            self.vae.to(self.device).eval().requires_grad_(False)
        self.scheduler = DDPMScheduler.from_pretrained(root / "scheduler")
        self.objective = DiffusionObjective(self.scheduler.alphas_cumprod, self.scheduler.config.prediction_type)
        self.family = model_family(cross_attention_layers(self.unet))
        self.text_encoder_layer = encoded_layer(self.family, self.text_encoders)
        self.resolution = self._resolution()
        self.captions = captions
        self.cache_dir = cache_dir
        self.sample_steps, self.guidance = sample_steps, guidance
        self.word: str | None = None
        self._word_ids: list[int] = []
        self._added_words: set[str] = set()
        self._vae_offloaded = False

    @property
    def is_sdxl(self) -> bool:
        return len(self.text_encoders) == 2

    def _resolution(self) -> int:
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        return int(self.unet.config.sample_size) * scale

    @property
    def pixel_space(self) -> bool:
        return self.vae is None

    # -- words -------------------------------------------------------------------------------------------

    def prepare_words(self, word: str, superclass: str) -> list[Tensor]:
        ids = superclass_token(superclass, lambda text: [t(text, add_special_tokens=False).input_ids
                                                         for t in self.tokenizers])
        embeddings = []
        for tokenizer, encoder, token in zip(self.tokenizers, self.text_encoders, ids, strict=True):
            if in_vocabulary(tokenizer, word) and word not in self._added_words:
                raise known_word(word)
            embeddings.append(encoder.get_input_embeddings().weight[token].detach().clone())
        self._word_ids = self._add_word(word)
        self.word = word
        return embeddings

    def _add_word(self, word: str) -> list[int]:
        """Make `word` one token of every tokenizer (once) and return its ids."""
        ids = []
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders, strict=True):
            if word not in self._added_words:
                tokenizer.add_tokens([word])
                encoder.resize_token_embeddings(len(tokenizer))
            ids.append(tokenizer.convert_tokens_to_ids(word))
        self._added_words.add(word)
        return ids

    def install_word(self, word: str, embeddings: list[Tensor]) -> None:
        """Make `word` a token whose input embedding is `embeddings` (one per text encoder), as a host does
        when it applies a concept; prompts then need no substitute embeddings."""
        with torch.no_grad():
            for word_id, encoder, embedding in zip(self._add_word(word), self.text_encoders, embeddings, strict=True):
                encoder.get_input_embeddings().weight[word_id] = embedding.to(self.device)

    @contextmanager
    def _word_embeddings(self, encoder_index: int, embedding: Tensor | None):
        """While active, the concept word's token reads `embedding` (keeping its gradient)."""
        if embedding is None:
            yield
            return
        word_id = self._word_ids[encoder_index]
        table = self.text_encoders[encoder_index].get_input_embeddings()

        def substitute(_module, args, out):
            mask = (args[0] == word_id)[..., None]
            return torch.where(mask, embedding.to(out.device, out.dtype), out)

        hook = table.register_forward_hook(substitute)
        try:
            yield
        finally:
            hook.remove()

    def _ids(self, tokenizer, prompts: list[str]) -> Tensor:
        return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids.to(self.device)

    def encode(self, prompts: list[str], embeddings: list[Tensor] | None) -> Conditioning:
        """The context of `prompts` (the word reading `embeddings`); for SDXL also the pooled vector of the prompt
        itself, as sampling passes it, without gradients (as A1111 and ComfyUI train)."""
        hidden, extra = [], {}
        for k, (tokenizer, encoder) in enumerate(zip(self.tokenizers, self.text_encoders, strict=True)):
            with self._word_embeddings(k, embeddings[k] if embeddings else None):
                out = encoder(self._ids(tokenizer, prompts), output_hidden_states=True)
            hidden.append(out.hidden_states[-2] if self.text_encoder_layer == "penultimate" and self.is_sdxl
                          else out.last_hidden_state)
        if self.is_sdxl:
            size = float(self.resolution)
            time_ids = torch.tensor([[size, size, 0.0, 0.0, size, size]], device=self.device).expand(len(prompts), -1)
            extra["added_cond_kwargs"] = {"text_embeds": out.text_embeds.detach(), "time_ids": time_ids}
        return Conditioning(torch.cat(hidden, dim=-1), extra)

    def word_mask(self, prompts: list[str], word: str) -> Tensor:
        tokenizer = self.tokenizers[0]
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise TrainingError(f"{word!r} is not a single token: cannot locate it in the prompt")
        mask = self._ids(tokenizer, prompts) == ids[0]
        if not mask.any(dim=1).all():
            raise TrainingError(f"a training prompt lacks the word {word!r} (too long a prompt?): {prompts}")
        return mask

    # -- images and the model ----------------------------------------------------------------------------

    @contextmanager
    def _vae_on_device(self):
        """The VAE on the accelerator while it works; it waits on the CPU while the UNet trains."""
        self.vae.to(self.device)
        try:
            yield self.vae
        finally:
            if self._vae_offloaded:
                self.vae.to("cpu")

    def encode_images(self, images: Tensor) -> Tensor:
        x = images.to(self.device, torch.float32) * 2 - 1
        if self.vae is None:
            return x
        with self._vae_on_device() as vae:
            return vae.encode(x).latent_dist.mode() * vae.config.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        """Latents to images in [0, 1], one at a time (a VAE decoding at 1024 px holds GBs)."""
        if self.vae is None:
            return ((latents.float() + 1) / 2).clamp(0, 1)
        with self._vae_on_device() as vae:
            images = [vae.decode(x[None].float() / vae.config.scaling_factor).sample for x in latents]
        return ((torch.cat(images) + 1) / 2).clamp(0, 1)

    def predict(self, noisy: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        if self.vae is not None and not self._vae_offloaded and self.device.type != "cpu" and torch.is_grad_enabled():
            self._vae_offloaded = True  # training has started: the latents are cached
            self.vae.to("cpu")
        extra = {k: {n: v.to(self.compute_dtype) for n, v in kw.items()} for k, kw in cond.extra.items()}
        return self.unet(noisy.to(self.compute_dtype), t, encoder_hidden_states=cond.context.to(self.compute_dtype),
                         **extra).sample

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        if enabled:
            self.unet.enable_gradient_checkpointing()
        else:
            self.unet.disable_gradient_checkpointing()

    def second_moment(self, progress: Progress | None = None) -> SecondMoment:
        captions = self.captions
        if captions is None or isinstance(captions, (str, Path)):
            captions = load_captions(captions)
        return host_second_moment(lambda p: self.encode(p, None).context, self.text_encoders, self.text_encoder_layer,
                                  captions, progress, cache_dir=self.cache_dir)

    # -- sampling ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def superclass_context(self, prompts: list[str], superclasses: Mapping[str, str]) -> Tensor:
        """What globally or context-locked concepts read in `sample(prompts, ...)`
        (`PatchHandle.set_superclass_context`): its guided batch, empty prompts then `prompts`, encoded with each
        concept word replaced by its superclass word."""
        empty = self.encode([""] * len(prompts), None).context
        return torch.cat([empty, self.encode([to_superclass(p, superclasses) for p in prompts], None).context])

    def read_superclass(self, handle: PatchHandle, prompts: list[str]) -> None:
        """Hand `handle` (from `patch_unet`) the `superclass_context` of `prompts` where one of its concepts is locked
        otherwise than locally, before `sample(prompts, ...)`."""
        words = superclass_words(handle.uses)
        if words:
            handle.set_superclass_context(self.superclass_context(prompts, words))

    @torch.no_grad()
    def sample(self, prompts: list[str], seeds: list[int], embeddings: list[Tensor] | None = None,
               contexts: tuple[Conditioning, Conditioning] | None = None) -> Tensor:
        """DDIM with classifier-free guidance; one image per prompt and seed, `(N, 3, H, W)` in [0, 1]."""
        cond, uncond = contexts or (self.encode(prompts, embeddings), self.encode([""] * len(prompts), None))
        channels, size = self.unet.config.in_channels, self.unet.config.sample_size
        both = Conditioning(torch.cat([uncond.context, cond.context]), _cat_extra(uncond.extra, cond.extra))
        x = guided_ddim(lambda x2, t: self.predict(x2, t.expand(len(x2)).to(self.device), both).float(),
                        self.scheduler.config, seeded_noise(seeds, channels, size).to(self.device),
                        self.sample_steps, self.guidance)
        return self.decode(x).cpu()


def seeded_noise(seeds: Sequence[int], channels: int, size: int) -> Tensor:
    """Starting noise, one `(channels, size, size)` draw per seed: the same seed always gives the same noise."""
    return torch.stack([torch.randn(channels, size, size, generator=torch.Generator().manual_seed(s)) for s in seeds])


def guided_ddim(predict: Callable[[Tensor, Tensor], Tensor], scheduler_config, noise: Tensor, steps: int,
                guidance: float) -> Tensor:
    """DDIM with classifier-free guidance; `predict(x, t)` gets `[x; x]` and returns `[uncond; cond]` outputs.

    Trailing spacing starts at the last timestep (needed by zero-terminal-SNR schedules); no clipping:
    with v-prediction and guidance, clipping the x0 estimate inverts colours.
    """
    scheduler = DDIMScheduler.from_config(scheduler_config, clip_sample=False, set_alpha_to_one=True,
                                          timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    x = noise
    for t in scheduler.timesteps:
        out_uncond, out_cond = predict(torch.cat([x, x]), t).chunk(2)
        x = scheduler.step(out_uncond + guidance * (out_cond - out_uncond), t, x).prev_sample
    return x


def _cat_extra(a: dict, b: dict) -> dict:
    if not a:
        return {}
    kwargs = {k: torch.cat([a["added_cond_kwargs"][k], b["added_cond_kwargs"][k]]) for k in a["added_cond_kwargs"]}
    return {"added_cond_kwargs": kwargs}

