"""The loaded model of A1111 or reForge (SD1.x, SD2.x, SDXL) as a `perfusion_core.train.TrainingHost`,
and what every web UI's training shares: gradients on for the trainer's tensors only."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager

import numpy as np
import torch
from modules import devices, processing, scripts, shared
from modules.prompt_parser import SdConditioning
from torch import Tensor, nn

from perfusion_core import TrainingError, cross_attention_layers
from perfusion_core.captions import load_captions
from perfusion_core.differentiable import checkpointed, normal_tensors
from perfusion_core.layers import model_family
from perfusion_core.objective import DiffusionObjective
from perfusion_core.second_moment import Progress, SecondMoment, host_second_moment
from perfusion_core.train import Conditioning
from perfusion_core.words import known_word, superclass_token

from . import backend

CHUNK = 77  # tokens per prompt chunk, <bos> and <eos> included
CHECKPOINTED_BLOCKS = ("BasicTransformerBlock", "ResBlock")  # in ldm's, sgm's, Forge's and reForge's UNets


class A1111Host:
    """Text encoding, VAE, UNet and previews of an A1111 or reForge `sd_model` as the host's own code runs them."""

    def __init__(self, sd_model, resolution: int, preview_steps: int = 20, cfg_scale: float = 7.0) -> None:
        self.sd_model = sd_model
        self.text_models = backend.text_models(sd_model)
        self.unet = backend.unet_of(sd_model)
        self.family = model_family(cross_attention_layers(self.unet))
        self.text_encoder_layer = backend.text_encoder_layer(sd_model)
        self.objective = self._objective()
        self.device = devices.device
        self.compute_dtype = self._compute_dtype()
        self.resolution, self.preview_steps, self.cfg_scale = resolution, preview_steps, cfg_scale
        self.word: str | None = None
        self._registered: list = []

    # -- what differs between the web UIs ----------------------------------------------------------------

    @property
    def modules(self) -> list[nn.Module]:
        """The modules holding the UNet and the text encoders, for `trainable`."""
        return [self.sd_model]

    @property
    def text_encoders(self) -> list[nn.Module]:
        """The modules whose weights `C` depends on."""
        return [self.sd_model.cond_stage_model]

    def _objective(self) -> DiffusionObjective:
        prediction = "v_prediction" if getattr(self.sd_model, "parameterization", "eps") == "v" else "epsilon"
        return DiffusionObjective(self.sd_model.alphas_cumprod, prediction)

    def _compute_dtype(self) -> torch.dtype:
        """What the UNet computes in under `devices.autocast()`: autocast's dtype (float16 on CUDA), else the UNet's."""
        context = devices.autocast()
        return context.fast_dtype if isinstance(context, torch.autocast) else devices.dtype_unet

    def _input_embedding(self, model, word: str) -> Tensor:
        """The input embedding of the one-token `word` in the text encoder of `model`."""
        return model.encode_embedding_init_text(word, 1)[0]

    def _conditioning(self, batch: SdConditioning) -> Tensor | dict[str, Tensor]:
        return self.sd_model.get_learned_conditioning(batch)

    def _apply_unet(self, noisy: Tensor, t: Tensor, context: Tensor, vector: Tensor | None) -> Tensor:
        return self.sd_model.apply_model(noisy, t, context if vector is None else {"crossattn": context,
                                                                                  "vector": vector})

    # -- words -------------------------------------------------------------------------------------------

    def _token(self, superclass: str) -> int:
        """The superclass's token id for the first text encoder, checking it is one token for each."""
        return superclass_token(superclass, lambda text: [model.tokenize([text])[0] for model in self.text_models])[0]

    def prepare_words(self, word: str, superclass: str) -> list[Tensor]:
        if all(len(model.tokenize([word])[0]) == 1 for model in self.text_models):
            raise known_word(word)
        self._token(superclass)
        with torch.no_grad(), devices.autocast():
            embeddings = [self._input_embedding(model, superclass).detach().float().cpu() for model in self.text_models]
        self.word = word
        self._register(embeddings)
        return embeddings

    def _register(self, vectors: list[Tensor]) -> None:
        """(Re-)register the concept word with `vectors`, which may carry gradients."""
        self._registered = backend.register_word(self.sd_model, self.word, vectors, f"{self.word} (training)")

    def release(self) -> None:
        """Unregister the concept word."""
        if self.word is not None:
            backend.unregister_word(self.sd_model, self.word, self._registered)

    def encode(self, prompts: list[str], embeddings: list[Tensor] | None) -> Conditioning:
        """Prompts encoded as txt2img encodes them at the training resolution; SDXL's vector (pooled text and
        image sizes) rides along without gradients, as in the other hosts."""
        if embeddings is not None:
            self._register(embeddings)
        batch = SdConditioning(prompts, width=self.resolution, height=self.resolution)
        with devices.autocast():
            cond = self._conditioning(batch)
        if isinstance(cond, dict):  # SDXL
            return Conditioning(cond["crossattn"].float(), {"vector": cond["vector"].detach().float()})
        return Conditioning(cond.float())

    def word_mask(self, prompts: list[str], word: str) -> Tensor:
        token = None if word == self.word else self._token(word)
        chunked = [self.text_models[0].tokenize_line(prompt)[0] for prompt in prompts]
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
        """Latents in the VAE's own dtype, outside fp16 autocast. Where an fp16 VAE overflows (SDXL's), it is turned
        to float32 as the web UI does on a NaN decode ("Automatically revert VAE to 32-bit floats")."""
        latents = self._encode_first_stage(images)
        vae = getattr(self.sd_model, "first_stage_model", None)
        if (not torch.isfinite(latents).all() and vae is not None and devices.dtype_vae != torch.float32
                and getattr(shared.opts, "auto_vae_precision", False)):
            devices.dtype_vae = torch.float32
            vae.to(devices.dtype_vae)
            latents = self._encode_first_stage(images)
        return latents

    def _encode_first_stage(self, images: Tensor) -> Tensor:
        x = (images * 2 - 1).to(devices.device, devices.dtype_vae)
        posterior = self.sd_model.encode_first_stage(x)
        # A1111's SD1/SD2 VAE gives a distribution; reForge's (and sgm's) a latent tensor, whose `mode` is torch's
        latents = posterior if isinstance(posterior, Tensor) else posterior.mode()
        return self.sd_model.get_first_stage_encoding(latents).float().clone()  # reForge: an inference tensor

    def predict(self, noisy: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        with devices.autocast():
            return self._apply_unet(noisy, t, cond.context, cond.extra.get("vector")).float()

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each transformer and residual block of the UNet in the backward pass."""
        for module in self.unet.modules():
            if type(module).__name__ in CHECKPOINTED_BLOCKS:
                if enabled:
                    module.forward = checkpointed(type(module).forward.__get__(module))
                else:
                    module.__dict__.pop("forward", None)

    def second_moment(self, progress: Progress | None = None) -> SecondMoment:
        return host_second_moment(lambda batch: self.encode(batch, None).context, self.text_encoders,
                                  self.text_encoder_layer, load_captions(), progress)

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
def trainable(modules: list[nn.Module]) -> Iterator[None]:
    """Gradients on, for the trainer's tensors only: the model's own weights stay frozen. Tensors made under
    inference mode are replaced by equal normal ones first.

    ldm's and sgm's own block checkpointing is switched off meanwhile: A1111 before 1.10 loads SD1/SD2 with it on,
    and its backward differentiates every weight of the block, which fails on frozen weights (1.10 turns it off at
    load). The trainer's optional checkpointing (`A1111Host.set_gradient_checkpointing`) is a separate mechanism.
    SDXL's conditioner runs embedders not marked trainable under `no_grad`: they are marked so meanwhile, for the
    word embedding's gradient.
    """
    for module in modules:
        normal_tensors(module)
    flags = [(p, p.requires_grad) for module in modules for p in module.parameters()]
    switched = [(m, name, value) for module in modules for m in module.modules()
                for name, value in (("checkpoint", False), ("use_checkpoint", False), ("is_trainable", True))
                if getattr(m, name, None) is (not value)]
    try:
        with torch.inference_mode(False), torch.enable_grad():
            for p, _ in flags:
                p.requires_grad_(False)
            for m, name, value in switched:
                setattr(m, name, value)
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, name, value in switched:
            setattr(m, name, not value)
