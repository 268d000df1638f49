"""Train a Perfusion concept: the host-agnostic loop.

A host (diffusers, ComfyUI, A1111) implements the small `TrainingHost` protocol; nothing else about
it reaches the loop. Only the value targets `o*_V` and the concept word's embedding(s) are trained;
`i*` follows the concept word's encoding by EMA, the keys stay locked to the superclass (or, with
`lock_keys=False`, the paper's ablation, key targets `o*_K` are trained like the value targets). With `lock="global"` or
`"context"` the UNet reads the training captions encoded with the superclass word as it will at inference (`patch`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from .concept import Concept
from .errors import PerfusionError, TrainingError
from .files import read_safetensors, save_concept, save_tensors
from .images import data_url, preview_grid
from .knobs import RECIPE
from .layers import CrossAttentionLayer, cross_attention_layers
from .memory import use_gradient_checkpointing
from .objective import DiffusionObjective
from .patch import LOCKS, ConceptUse, PatchHandle, build_patch, install_patch
from .precision import LossScaler
from .second_moment import Progress, SecondMoment
from .words import check_training_words

STATE_FORMAT = 1
# What a resumed run may change (the rest of the recipe, C's captions included, stays the run's own)
RESUMABLE = ("steps", "save_every", "preview_every", "gradient_checkpointing")
log = logging.getLogger("perfusion")
STUCK_ZERO_STEPS = 10  # a loss of exactly zero this many steps running means nothing is learned

TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
)
"""Textual-inversion prompt templates; `{}` is the concept (or superclass) word."""


@dataclass
class Conditioning:
    """What the UNet is conditioned on: the context its cross-attention reads, plus host extras."""

    context: Tensor
    extra: dict[str, Any] = field(default_factory=dict)


class TrainingHost(Protocol):
    """What a host gives the loop. Contexts are exactly what reaches the UNet's `to_k`/`to_v`."""

    unet: nn.Module
    family: str
    text_encoder_layer: str
    objective: DiffusionObjective
    device: torch.device  # where the UNet computes; the trainable state lives there in float32
    compute_dtype: torch.dtype  # the UNet's compute dtype; float16 gets dynamic loss scaling

    def prepare_words(self, word: str, superclass: str) -> list[Tensor]:
        """Check the superclass is one token, make `word` a new token; return the superclass's
        input embedding(s), one per text encoder."""

    def encode(self, prompts: list[str], embeddings: list[Tensor] | None) -> Conditioning:
        """Encode prompts; where the concept word occurs, use `embeddings` (gradients reach them)."""

    def word_mask(self, prompts: list[str], word: str) -> Tensor:
        """`(B, T)` bool: the context positions of the single-token `word` in each prompt."""

    def encode_images(self, images: Tensor) -> Tensor:
        """Images `(N, 3, H, W)` in [0, 1] to the model's latent space, deterministically (the loop passes one image
        at a time)."""

    def predict(self, noisy: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        """The UNet's prediction for noisy latents at timesteps `t`."""

    def second_moment(self, progress: Progress | None) -> SecondMoment:
        """`C` of the host's text encoder at the layer the UNet reads (cached)."""

    def sample(self, prompts: list[str], seeds: list[int], embeddings: list[Tensor]) -> Tensor:
        """Preview images `(N, 3, H, W)` in [0, 1] with the UNet as currently patched."""

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute UNet activations in the backward pass (less memory, more time)."""


@dataclass
class TrainSettings:
    """The recipe. Defaults are the paper's: 400 steps, effective batch 16, AdamW 0.03 / 0.006."""

    word: str
    superclass: str
    steps: int = RECIPE["steps"].default
    lr_target: float = RECIPE["lr_target"].default
    lr_embedding: float = RECIPE["lr_embedding"].default
    batch_size: int = RECIPE["batch_size"].default
    grad_accum: int = RECIPE["grad_accum"].default  # 0: ceil(16 / batch_size), the paper's effective batch
    beta: float = RECIPE["beta"].default
    tau: float = RECIPE["tau"].default
    ema: float = 0.99
    flip: float = RECIPE["flip"].default
    mask_floor: float = RECIPE["mask_floor"].default
    seed: int = RECIPE["seed"].default
    save_every: int = RECIPE["save_every"].default  # 0: save only at the end
    preview_every: int = RECIPE["preview_every"].default  # 0: no previews
    preview_prompts: tuple[str, ...] = ("a photo of a {}",)
    preview_seeds: tuple[int, ...] = (0,)
    templates: tuple[str, ...] = TEMPLATES
    gradient_checkpointing: bool | None = None  # None: on where the card's free memory needs it (`memory`)
    lock_keys: bool = True
    lock: str = "local"  # how the concept is applied while training, and by default afterwards (`ConceptUse`)

    def __post_init__(self) -> None:
        check_training_words(self.word, self.superclass)
        if self.lock not in LOCKS:
            raise TrainingError(f"lock must be one of {', '.join(LOCKS)}, got {self.lock!r}")
        if self.lock != "local" and not self.lock_keys:
            raise TrainingError(f"lock '{self.lock}' locks the keys to the superclass, so it cannot train them: "
                                "use lock 'local' with lock_keys=False")
        for name, knob in RECIPE.items():
            try:
                setattr(self, name, knob.check(getattr(self, name), "training"))
            except PerfusionError as e:
                raise TrainingError(str(e)) from None
        self.grad_accum = self.grad_accum or math.ceil(16 / self.batch_size)
        self.preview_prompts, self.preview_seeds = tuple(self.preview_prompts), tuple(self.preview_seeds)
        self.templates = tuple(self.templates)
        if not all("{}" in t for t in (*self.templates, *self.preview_prompts)):
            raise TrainingError("every prompt template needs a {} where the concept word goes")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, **overrides: Any) -> TrainSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in {**json.loads(text), **overrides}.items() if k in known})


@dataclass
class TrainingData:
    """Training images `(N, 3, H, W)` in [0, 1] of one size, optional masks `(N, H, W)` in [0, 1], and
    optional captions: one prompt per image with `{}` where the concept word goes, used instead of the
    templates (describe what is not the concept, such as place and background, so the word need not carry it).
    """

    images: Tensor
    masks: Tensor | None = None
    captions: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[0] == 0 or self.images.shape[1] != 3:
            raise TrainingError(
                f"need at least one RGB image as (N, 3, H, W), got shape {tuple(self.images.shape)}: "
                "check the image folder"
            )
        if self.masks is not None and self.masks.shape != (self.images.shape[0], *self.images.shape[2:]):
            raise TrainingError(
                f"masks have shape {tuple(self.masks.shape)} but the images are {tuple(self.images.shape)}: "
                "give one mask per image, of the image's size"
            )
        if self.captions is not None:
            self.captions = tuple(self.captions)
            if len(self.captions) != self.images.shape[0]:
                raise TrainingError(f"{len(self.captions)} captions for {self.images.shape[0]} images: give one each")
            if not all("{}" in c for c in self.captions):
                raise TrainingError("every caption needs a {} where the concept word goes")


@dataclass
class _Batch:
    prompts: list[str]
    superclass_prompts: list[str]
    x0: Tensor
    noise: Tensor
    t: Tensor
    masks: Tensor | None


@dataclass
class StepInfo:
    """Progress of a run, passed to the progress callback after every step."""

    step: int
    steps: int
    loss: float
    elapsed: float
    eta: float


@dataclass
class TrainResult:
    concept: Concept
    losses: list[float]
    previews: list[tuple[int, Tensor]]
    concept_path: Path
    state_path: Path


def state_path_for(concept_path: str | Path) -> Path:
    """`NAME.state.safetensors` beside `NAME.safetensors`: the full training state for resuming."""
    path = Path(concept_path)
    return path.with_name(path.name.removesuffix(".safetensors").removesuffix(".state") + ".state.safetensors")


class Trainer:
    """One training run of one concept on one host; `run()` trains, checkpoints and returns the concept."""

    def __init__(self, host: TrainingHost, data: TrainingData, settings: TrainSettings, out: str | Path) -> None:
        self.host, self.data, self.settings = host, data, settings
        self.concept_path = Path(out)
        self.state_path = state_path_for(out)
        self.layers: list[CrossAttentionLayer] = cross_attention_layers(host.unet)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.step = 0
        self.losses: list[float] = []
        self.previews: list[tuple[int, Tensor]] = []
        self.i_super: Tensor | None = None
        self.i_star: Tensor | None = None
        self._latents: Tensor | None = None
        self._masks: Tensor | None = None
        self._moment: SecondMoment | None = None
        self._c_inv: Tensor | None = None
        superclass_embeddings = host.prepare_words(settings.word, settings.superclass)
        self.embeddings = [e.detach().to(host.device, torch.float32).clone().requires_grad_(True)
                           for e in superclass_embeddings]
        self.targets: dict[str, Tensor] = {}
        self.key_targets: dict[str, Tensor] = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self.scaler = LossScaler(enabled=host.compute_dtype == torch.float16)
        self.on_preview: Callable[[int, Tensor], None] | None = None

    # -- set-up ------------------------------------------------------------------------------------------

    def _prepare(self, progress: Progress | None) -> None:
        self._moment = self.host.second_moment(progress)
        self._c_inv = self._moment.inverse()
        with torch.no_grad():
            images = self.data.images.float()
            self._latents = torch.stack([self._encode(images), self._encode(images.flip(-1))])
        if self.data.masks is not None:
            masks = self.data.masks.float()
            masks = masks / masks.flatten(1).amax(1).clamp_min(1e-8)[:, None, None]  # per image, max 1
            masks = self.settings.mask_floor + (1 - self.settings.mask_floor) * masks
            size = self._latents.shape[-2:]
            resized = torch.nn.functional.interpolate(masks[:, None], size=size, mode="area")
            self._masks = torch.stack([resized, resized.flip(-1)])

    def _encode(self, images: Tensor) -> Tensor:
        """Latents of `images`, one image at a time (a VAE's activations at 1024 px are GBs), checked finite."""
        latents = []
        for k, image in enumerate(images):
            latent = self.host.encode_images(image[None]).float()
            if not torch.isfinite(latent).all():
                raise TrainingError(
                    f"the VAE encoded training image {k + 1} to NaN or inf: it overflows in this precision (SDXL's "
                    "VAE does in float16). Run the VAE in float32 (or bfloat16), or use an fp16-fixed VAE"
                )
            latents.append(latent)
        return torch.cat(latents)

    def _init_targets(self, superclass_prompts: list[str]) -> None:
        """`i_super` from the first batch's superclass prompts; `o*_V = W_V i_super` (and `o*_K = W_K i_super`
        when keys are trained); `i* = i_super`."""
        with torch.no_grad():
            context = self.host.encode(superclass_prompts, None).context
            mask = self.host.word_mask(superclass_prompts, self.settings.superclass)
            self.i_super = context[mask].double().mean(0).cpu()
            self.i_star = self.i_super.clone()
            for layer in self.layers:
                self.targets[layer.name] = self._superclass_output(layer.to_v)
                if not self.settings.lock_keys:
                    self.key_targets[layer.name] = self._superclass_output(layer.to_k)
        self._make_optimizer()

    def _superclass_output(self, projection: nn.Module) -> Tensor:
        """`W i_super` without the bias, as a trainable float32 target on the host's device. Computed through the
        host's own projection in its compute dtype (which casts fp8-stored weights per call), with a gradient: a
        weight format that gradients cannot pass through is refused here, by name."""
        x = self.i_super.to(self.host.device, self.host.compute_dtype)[None].requires_grad_(True)
        try:
            with torch.enable_grad():
                out = projection(x) - projection(torch.zeros_like(x))
                out.float().sum().backward()
        except (RuntimeError, NotImplementedError, TypeError) as e:
            weight = getattr(projection, "weight", None)
            stored = f"{type(weight).__name__} of {weight.dtype}" if weight is not None else type(projection).__name__
            raise TrainingError(
                f"cannot train through this UNet's cross-attention weights ({stored}): {e}. Load the checkpoint "
                "with weights in fp16, bf16 or fp8 to train (a trained concept also applies to quantised models)"
            ) from e
        return out[0].detach().to(self.host.device, torch.float32).requires_grad_(True)

    def _make_optimizer(self) -> None:
        s = self.settings
        self.optimizer = torch.optim.AdamW(
            [{"params": [*self.targets.values(), *self.key_targets.values()], "lr": s.lr_target},
             {"params": self.embeddings, "lr": s.lr_embedding}]
        )

    # -- the concept as it stands ------------------------------------------------------------------------

    def concept(self) -> Concept:
        s = self.settings
        v = (self._c_inv @ self.i_star.double()).float()
        return Concept(
            word=s.word, superclass=s.superclass, family=self.host.family, context_dim=self.layers[0].context_dim,
            text_encoder_layer=self.host.text_encoder_layer, i_star=self.i_star.float(), v=v,
            i_super=self.i_super.float(), embeddings=self.embeddings, o_v=self.targets, o_k=self.key_targets,
            c_fingerprint=self._moment.fingerprint,
            training={"beta": str(s.beta), "tau": str(s.tau), "lock": s.lock, "steps": str(self.step),
                      "images": str(self.data.images.shape[0]), "seed": str(s.seed)},
        )

    # -- one step ----------------------------------------------------------------------------------------

    def _draw(self) -> _Batch:
        s, g = self.settings, self.generator
        n = self._latents.shape[1]
        index = torch.randint(n, (s.batch_size,), generator=g)
        flip = (torch.rand(s.batch_size, generator=g) < s.flip).long()
        templates = [s.templates[k] for k in torch.randint(len(s.templates), (s.batch_size,), generator=g).tolist()]
        if self.data.captions is not None:
            templates = [self.data.captions[k] for k in index.tolist()]
        t = torch.randint(self.host.objective.num_timesteps, (s.batch_size,), generator=g)
        x0 = self._latents[flip, index]
        return _Batch(
            prompts=[template.format(s.word) for template in templates],
            superclass_prompts=[template.format(s.superclass) for template in templates],
            x0=x0, noise=torch.randn(x0.shape, generator=g), t=t,
            masks=self._masks[flip, index] if self._masks is not None else None,
        )

    def _micro_step(self, handle: PatchHandle, update_ema: bool) -> float:
        s = self.settings
        batch = self._draw()
        if self.i_super is None:
            self._init_targets(batch.superclass_prompts)
        cond = self.host.encode(batch.prompts, self.embeddings)
        if update_ema:
            encodings = cond.context[self.host.word_mask(batch.prompts, s.word)].detach().double().mean(0).cpu()
            self.i_star = s.ema * self.i_star + (1 - s.ema) * encodings
        handle.patches = build_patch(self.layers, [ConceptUse(self.concept(), s.beta, s.tau, lock=s.lock)])
        if s.lock != "local":
            with torch.no_grad():
                handle.set_superclass_context(self.host.encode(batch.superclass_prompts, None).context)
        objective = self.host.objective
        device = cond.context.device
        x0, noise, t = batch.x0.to(device), batch.noise.to(device), batch.t.to(device)
        prediction = self.host.predict(objective.add_noise(x0, noise, t), t, cond).float()
        error = (prediction - objective.target(x0, noise, t)).square()
        if batch.masks is None:
            loss = error.mean()
        else:
            weights = batch.masks.to(device)
            loss = (error * weights).sum() / (weights.sum() * error.shape[1])
        (self.scaler.scaled(loss) / s.grad_accum).backward()
        return float(loss.detach())

    def _parameters(self) -> list[Tensor]:
        return [*self.targets.values(), *self.key_targets.values(), *self.embeddings]

    def _gradients(self, handle: PatchHandle) -> tuple[float, bool]:
        """Accumulate one step's gradients into `.grad`, unscaled; return the mean loss and whether every gradient
        is finite. A non-finite gradient that loss scaling cannot explain stops the run."""
        s = self.settings
        loss = sum(self._micro_step(handle, update_ema=k == 0) for k in range(s.grad_accum)) / s.grad_accum
        self._check_loss(loss)
        finite = self.scaler.unscale(self._parameters())
        if not self.scaler.update(finite):
            raise TrainingError(
                f"the gradient became NaN or inf at step {self.step + 1} (the loss was {loss:.4g}); {self._kept()}. "
                "Lower the learning rates, or check the model: float16 overflow in the UNet or text encoder?"
            )
        return loss, finite

    def _check_loss(self, loss: float) -> None:
        if not math.isfinite(loss):
            raise TrainingError(
                f"the loss became {loss} at step {self.step + 1}; {self._kept()}. Lower the learning rates, "
                "or check the model runs in float32/bfloat16 rather than overflowing float16"
            )
        recent = [*self.losses[-(STUCK_ZERO_STEPS - 1):], loss]
        if len(recent) == STUCK_ZERO_STEPS and all(x == 0 for x in recent):
            raise TrainingError(
                f"the loss has been exactly zero for {STUCK_ZERO_STEPS} steps, so nothing is learned; "
                f"{self._kept()}. Check the images and the model"
            )

    def _kept(self) -> str:
        return (f"the last good checkpoint ({self.state_path.name}) is kept" if self.state_path.is_file()
                else "no checkpoint was written yet")

    # -- checkpoints -------------------------------------------------------------------------------------

    def _parameter_names(self) -> list[str]:
        """State-file names of the optimizer's parameters, in its order."""
        return [*(f"target.{n}" for n in self.targets), *(f"key_target.{n}" for n in self.key_targets),
                *(f"embedding.{k}" for k in range(len(self.embeddings)))]

    def save(self) -> Concept:
        """Write the lean concept file (the latest preview is its thumbnail) and the full training state beside
        it, both atomically; return the concept as written."""
        s = self.settings
        tensors: dict[str, Tensor] = {
            "i_star": self.i_star.double(), "i_super": self.i_super.double(),
            "rng": self.generator.get_state(), "losses": torch.tensor(self.losses, dtype=torch.float64),
            **{f"embedding.{k}": e for k, e in enumerate(self.embeddings)},
            **{f"target.{name}": t for name, t in self.targets.items()},
            **{f"key_target.{name}": t for name, t in self.key_targets.items()},
        }
        if self.scaler.enabled:
            tensors["loss_scale"] = self.scaler.state()
        names = self._parameter_names()
        for k, entry in self.optimizer.state_dict()["state"].items():
            for key, value in entry.items():
                tensors[f"optimizer.{names[k]}.{key}"] = torch.as_tensor(value)
        broken = [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if broken:
            raise TrainingError(f"the training state holds NaN or inf ({', '.join(broken[:3])}) at step {self.step}, "
                                f"so it is not written; {self._kept()}")
        metadata = {"perfusion.state_format": str(STATE_FORMAT), "step": str(self.step), "settings": s.to_json(),
                    "concept_file": self.concept_path.name}
        save_tensors(self.state_path, tensors, metadata)
        thumbnail = data_url(preview_grid(self.previews[-1][1])) if self.previews else ""
        concept = replace(self.concept(), thumbnail=thumbnail)
        save_concept(concept, self.concept_path)
        return concept

    @classmethod
    def resume(cls, host: TrainingHost, data: TrainingData, path: str | Path, **overrides: Any) -> Trainer:
        """Continue a run from its state file (or the concept file beside it) with the file's own settings; only the
        `RESUMABLE` ones may be overridden."""
        fixed = sorted(set(overrides) - set(RESUMABLE))
        if fixed:
            raise TrainingError(f"a resumed run keeps its recipe: {', '.join(fixed)} cannot change (only "
                                f"{', '.join(RESUMABLE)} can); start a new run to change them")
        state_path = state_path_for(path)
        if not state_path.is_file():
            raise TrainingError(f"no training state {state_path.name} beside {Path(path).name}: cannot resume")
        _, metadata = read_safetensors(state_path)
        if metadata.get("perfusion.state_format") != str(STATE_FORMAT):
            raise TrainingError(f"{state_path.name} is not a perfusion training state of format {STATE_FORMAT}")
        tensors = load_file(state_path)
        settings = TrainSettings.from_json(metadata["settings"], **overrides)
        trainer = cls(host, data, settings, state_path.with_name(metadata["concept_file"]))
        trainer.step = int(metadata["step"])
        trainer.losses = tensors["losses"].tolist()
        trainer.generator.set_state(tensors["rng"])
        trainer.i_star, trainer.i_super = tensors["i_star"], tensors["i_super"]
        if "loss_scale" in tensors:
            trainer.scaler.load_state(tensors["loss_scale"])
        with torch.no_grad():
            for k, e in enumerate(trainer.embeddings):
                e.copy_(tensors[f"embedding.{k}"])

        def trainable(name: str) -> Tensor:
            return tensors[name].to(host.device).requires_grad_(True)

        trainer.targets = {layer.name: trainable(f"target.{layer.name}") for layer in trainer.layers}
        if not settings.lock_keys:
            trainer.key_targets = {layer.name: trainable(f"key_target.{layer.name}") for layer in trainer.layers}
        trainer._make_optimizer()
        state = trainer.optimizer.state_dict()
        state["state"] = {
            k: {key.rsplit(".", 1)[1]: value for key, value in tensors.items() if key.startswith(f"optimizer.{name}.")}
            for k, name in enumerate(trainer._parameter_names())
        }
        trainer.optimizer.load_state_dict(state)
        return trainer

    # -- the run -----------------------------------------------------------------------------------------

    def _preview(self, handle: PatchHandle) -> None:
        """Sample the preview prompts with the concept as it stands, locked locally (a host's preview sampler encodes
        no superclass prompt)."""
        s = self.settings
        handle.patches = build_patch(self.layers, [ConceptUse(self.concept(), lock="local")])
        prompts = [p.format(s.word) for p in s.preview_prompts for _ in s.preview_seeds]
        seeds = [seed for _ in s.preview_prompts for seed in s.preview_seeds]
        with torch.no_grad():
            images = self.host.sample(prompts, seeds, [e.detach() for e in self.embeddings]).cpu()
        self.previews.append((self.step, images))
        if self.on_preview:
            self.on_preview(self.step, images)

    def _stop_requested(self, should_stop: Callable[[], bool], first_step: int) -> bool:
        """Ask the host whether to stop (it may answer by raising); a stop first saves the steps done so far."""
        try:
            stop = should_stop()
        except BaseException:
            self._save_progress(first_step)
            raise
        if stop:
            self._save_progress(first_step)
        return stop

    def _save_progress(self, first_step: int) -> None:
        every = self.settings.save_every
        already_saved = every and self.step % every == 0
        if self.step > first_step and not already_saved:
            self.save()

    def run(
        self,
        progress: Callable[[StepInfo], None] | None = None,
        on_preview: Callable[[int, Tensor], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        moment_progress: Progress | None = None,
    ) -> TrainResult:
        """Train to `settings.steps`, checkpointing every `save_every` steps, at the end, and when `should_stop`
        stops the run (by returning True or by raising)."""
        s = self.settings
        self.on_preview = on_preview
        self._prepare(moment_progress)
        checkpointing = use_gradient_checkpointing(s.gradient_checkpointing, self.host.family, s.batch_size,
                                                   self.host.device)
        if checkpointing:
            self.host.set_gradient_checkpointing(True)
        handle = install_patch(self.host.unet, self.layers, {})  # each micro-step sets the current patch
        start, first_step = time.monotonic(), self.step
        try:
            while self.step < s.steps:
                if should_stop and self._stop_requested(should_stop, first_step):
                    raise TrainingError(f"training stopped at step {self.step}; {self._kept()}")
                loss, finite = self._gradients(handle)
                if finite:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if not finite:  # float16 overflow: the step is drawn again at half the loss scale
                    log.info("Perfusion: gradient overflow at step %d, loss scale now %g", self.step + 1,
                             self.scaler.scale)
                    continue
                self.step += 1
                self.losses.append(loss)
                if s.save_every and self.step % s.save_every == 0 and self.step < s.steps:
                    self.save()
                if s.preview_every and self.step % s.preview_every == 0:
                    self._preview(handle)
                if progress:
                    elapsed = time.monotonic() - start
                    rate = elapsed / (self.step - first_step)
                    progress(StepInfo(self.step, s.steps, loss, elapsed, rate * (s.steps - self.step)))
        finally:
            handle.remove()
            if checkpointing:
                self.host.set_gradient_checkpointing(False)
        return TrainResult(self.save(), self.losses, self.previews, self.concept_path, self.state_path)
