"""The loaded A1111 / reForge model (SD1.x, SD2.x) as a `perfusion_core.train.TrainingHost`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager

import numpy as np
import torch
from modules import devices, processing, scripts, sd_hijack_checkpoint
from torch import Tensor

from perfusion_core import PerfusionError, TrainingError, cross_attention_layers
from perfusion_core.captions import load_captions
from perfusion_core.layers import model_family
from perfusion_core.objective import DiffusionObjective
from perfusion_core.second_moment import (
    Progress,
    SecondMoment,
    cached_second_moment,
    second_moment,
    weights_key,
)
from perfusion_core.train import Conditioning

from . import backend

CHUNK = 77  # tokens per prompt chunk, <bos> and <eos> included


class A1111Host:
    """Text encoding, VAE, UNet and previews of `sd_model` as the host's own code runs them."""

    def __init__(self, sd_model, resolution: int, preview_steps: int = 20, cfg_scale: float = 7.0) -> None:
        if backend.is_forge(sd_model) and not backend.has_cond_stage_model(sd_model):  # Forge
            raise PerfusionError("training in Forge is not supported: train in AUTOMATIC1111 or reForge")
        if getattr(sd_model, "is_sdxl", False):
            raise PerfusionError(
                "training SDXL concepts in the web UI is not supported yet: train on a diffusers SDXL folder with "
                "python -m perfusion_core train, then copy the file into the perfusion folder"
            )
        self.sd_model = sd_model
        self.encoder = sd_model.cond_stage_model
        self.unet = backend.unet_of(sd_model)
        self.family = model_family(cross_attention_layers(self.unet))
        self.text_encoder_layer = backend.text_encoder_layer(sd_model)
        prediction = "v_prediction" if getattr(sd_model, "parameterization", "eps") == "v" else "epsilon"
        self.objective = DiffusionObjective(sd_model.alphas_cumprod, prediction)
        self.resolution, self.preview_steps, self.cfg_scale = resolution, preview_steps, cfg_scale
        self.word: str | None = None
        self._registered: list = []
        self._vectors: list[Tensor] = []

    # -- words -------------------------------------------------------------------------------------------

    def _single_token(self, word: str) -> int:
        ids = self.encoder.tokenize([word])[0]
        if len(ids) != 1:
            raise TrainingError(
                f"the superclass {word!r} is {len(ids)} tokens for this model's tokenizer; it must be one token: "
                "use a common single word such as 'dog', 'toy' or 'teddy'"
            )
        return ids[0]

    def prepare_words(self, word: str, superclass: str) -> list[Tensor]:
        if any(c in word for c in "<>:,()[]") or not word.strip():
            raise TrainingError(f"the concept word {word!r} must be one plain word, e.g. 'hugsy'")
        self._single_token(superclass)
        with torch.no_grad(), devices.autocast():
            embedding = self.encoder.encode_embedding_init_text(superclass, 1)[0]
        self.word = word
        self._register([embedding.detach().float().cpu()])
        return [embedding.detach().float().cpu()]

    def _register(self, vectors: list[Tensor]) -> None:
        """(Re-)register the concept word with `vectors`, which may carry gradients."""
        self._vectors = vectors
        self._registered = backend.register_word(self.sd_model, self.word, vectors, f"{self.word} (training)")

    def release(self) -> None:
        """Unregister the concept word."""
        if self.word is not None:
            backend.unregister_word(self.sd_model, self.word, self._registered)

    def encode(self, prompts: list[str], embeddings: list[Tensor] | None) -> Conditioning:
        if embeddings is not None:
            self._register(embeddings)
        with devices.autocast():
            return Conditioning(self.encoder(prompts).float())

    def word_mask(self, prompts: list[str], word: str) -> Tensor:
        token = None if word == self.word else self._single_token(word)
        chunked = [self.encoder.tokenize_line(prompt)[0] for prompt in prompts]
        mask = torch.zeros(len(prompts), CHUNK * max(len(c) for c in chunked), dtype=torch.bool)
        for row, chunks in enumerate(chunked):
            for k, chunk in enumerate(chunks):
                if token is None:
                    positions = [fix.offset + 1 for fix in chunk.fixes if fix.embedding.name == word]
                else:
                    positions = [j for j, t in enumerate(chunk.tokens) if t == token]
                mask[row, [k * CHUNK + j for j in positions]] = True
        if not mask.any(dim=1).all():
            raise TrainingError(f"a training prompt lacks the word {word!r}: {prompts}")
        return mask.to(devices.device)

    # -- images and the model ----------------------------------------------------------------------------

    def encode_images(self, images: Tensor) -> Tensor:
        x = (images * 2 - 1).to(devices.device, devices.dtype_vae)
        with devices.autocast():
            posterior = self.sd_model.encode_first_stage(x)
        # A1111's SD1/SD2 VAE gives a distribution; reForge's (and sgm's) a latent tensor, whose `mode` is torch's
        latents = posterior if isinstance(posterior, Tensor) else posterior.mode()
        return self.sd_model.get_first_stage_encoding(latents).float().clone()  # reForge: an inference tensor

    def predict(self, noisy: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        with devices.autocast():
            return self.sd_model.apply_model(noisy, t, cond.context).float()

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """The web UI's own checkpointing of the UNet's transformer and residual blocks."""
        if enabled:
            sd_hijack_checkpoint.add()
        else:
            sd_hijack_checkpoint.remove()

    def second_moment(self, progress: Progress | None = None) -> SecondMoment:
        captions = load_captions()
        key = weights_key([self.encoder], self.text_encoder_layer, captions)

        def compute() -> SecondMoment:
            return second_moment(lambda batch: self.encode(batch, None).context, captions, progress=progress)

        return cached_second_moment(key, compute)

    def sample(self, prompts: list[str], seeds: list[int], embeddings: list[Tensor]) -> Tensor:
        """Previews through the web UI's own txt2img, with the UNet as the trainer has patched it."""
        self._register([e.detach() for e in embeddings])
        images = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            p = processing.StableDiffusionProcessingTxt2Img(
                sd_model=self.sd_model, prompt=prompt, seed=seed, steps=self.preview_steps, cfg_scale=self.cfg_scale,
                width=self.resolution, height=self.resolution, do_not_save_grid=True, do_not_save_samples=True,
                do_not_reload_embeddings=True,
            )
            p.disable_extra_networks = True  # the trainer's patch is already installed
            p.scripts, p.script_args = scripts.ScriptRunner(), []  # none run; reForge reads p.scripts unguarded
            with closing(p):
                image = processing.process_images(p).images[0]
            images.append(torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).float() / 255)
        return torch.stack(images)


@contextmanager
def trainable(sd_model) -> Iterator[None]:
    """Gradients on, for the trainer's tensors only: the model's own weights stay frozen.

    ldm's own block checkpointing is switched off meanwhile: A1111 before 1.10 loads SD1/SD2 with it on, and its
    backward differentiates every weight of the block, which fails on frozen weights (1.10 turns it off at load).
    The web UI's optional checkpointing (`set_gradient_checkpointing`) is a separate mechanism.
    """
    flags = [(p, p.requires_grad) for p in sd_model.parameters()]
    ldm_checkpointing = [(m, name) for m in sd_model.modules() for name in ("checkpoint", "use_checkpoint")
                         if getattr(m, name, None) is True]
    try:
        with torch.inference_mode(False), torch.enable_grad():
            for p, _ in flags:
                p.requires_grad_(False)
            for m, name in ldm_checkpointing:
                setattr(m, name, False)
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, name in ldm_checkpointing:
            setattr(m, name, True)
