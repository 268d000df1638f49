"""One training run from the Train tab or the API: perfusion_core's Trainer on the loaded model, reporting
through `shared.state` (progress, live loss, preview images, interrupt) and saving into the concept folder."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from modules import sd_models, shared

from perfusion_core import TrainingError
from perfusion_core.images import image_grid, load_image_folder, save_image, to_pil
from perfusion_core.train import StepInfo, Trainer, TrainingData, TrainResult, TrainSettings

from . import backend
from .forge_host import ForgeHost
from .host import A1111Host, trainable
from .network import PerfusionNetwork

_RECIPE = {f.name: f.default for f in fields(TrainSettings)}  # one source of the paper's defaults


@dataclass
class TrainRequest:
    """What the Train tab (or `POST /perfusion/v1/train`) asks for; defaults are the paper's recipe."""

    word: str
    superclass: str
    images: str
    name: str = ""  # file name in the concept folder; default: the word
    steps: int = _RECIPE["steps"]
    lr_target: float = _RECIPE["lr_target"]
    lr_embedding: float = _RECIPE["lr_embedding"]
    batch_size: int = _RECIPE["batch_size"]
    grad_accum: int = _RECIPE["grad_accum"]
    beta: float = _RECIPE["beta"]
    tau: float = _RECIPE["tau"]
    seed: int = _RECIPE["seed"]
    resolution: int = 0  # 0: the model's own (1024 for SDXL, 512 for the others)
    save_every: int = _RECIPE["save_every"]
    preview_every: int = _RECIPE["preview_every"]
    preview_prompt: str = "a photo of a {}"
    preview_steps: int = 20
    resume: bool = False
    gradient_checkpointing: bool | None = _RECIPE["gradient_checkpointing"]  # None: where the card needs it
    lock: str = _RECIPE["lock"]

    def settings(self) -> TrainSettings:
        return TrainSettings(
            word=self.word.strip(), superclass=self.superclass.strip(), steps=self.steps, lr_target=self.lr_target,
            lr_embedding=self.lr_embedding, batch_size=self.batch_size, grad_accum=self.grad_accum, beta=self.beta,
            tau=self.tau, seed=self.seed, save_every=self.save_every, preview_every=self.preview_every,
            preview_prompts=(self.preview_prompt,), gradient_checkpointing=self.gradient_checkpointing,
            lock=self.lock,
        )


@dataclass
class TrainOutcome:
    path: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    previews: list[Path] = field(default_factory=list)


class _Reporter:
    """Trainer callbacks that feed `shared.state` and keep preview images beside the concept file."""

    def __init__(self, concept_path: Path) -> None:
        self.concept_path = concept_path
        self.previews: list[Path] = []

    def progress(self, info: StepInfo) -> None:
        shared.state.job_count = info.steps
        shared.state.job_no = info.step
        shared.state.textinfo = (f"Perfusion: step {info.step}/{info.steps}, loss {info.loss:.5f}, "
                                 f"{info.eta:.0f} s left")

    def preview(self, step: int, images: torch.Tensor) -> None:
        grid = image_grid(images, columns=len(images))
        shared.state.assign_current_image(to_pil(grid))
        # the latest preview also becomes the concept's card image
        path = save_image(grid, self.concept_path.with_suffix(".preview.png"))
        self.previews.append(path)


def _loaded_for_training(sd_model):
    """The checkpoint the settings name, with its unpatched UNet loaded.

    The previews' txt2img loads the checkpoint the settings name (an API call's override_settings leave another
    loaded): load it now, or the web UI tears down the model being trained at the first preview. On Forge and
    reForge the last generation's UNet clone stays loaded, a Perfusion or LoRA patch applied, until another clone
    is loaded; training calls the UNet directly, so the unpatched one is loaded first.
    """
    if backend.has_cond_stage_model(sd_model):  # A1111, reForge
        sd_models.reload_model_weights()
        sd_model = shared.sd_model
        if not backend.is_forge(sd_model):
            return sd_model
        from ldm_patched.modules import model_management  # reForge

        load = model_management.load_models_gpu
    else:  # Forge
        from backend import memory_management

        sd_model, _ = sd_models.forge_model_reload()
        load = memory_management.load_models_gpu
    sd_model.forge_objects = sd_model.forge_objects_original.shallow_copy()
    load([sd_model.forge_objects.unet])
    return sd_model


def _training_host(sd_model, resolution: int, preview_steps: int) -> A1111Host:
    """The host for the loaded model: Forge's own backend, or A1111's and reForge's."""
    if backend.is_forge(sd_model) and not backend.has_cond_stage_model(sd_model):
        return ForgeHost(sd_model, resolution, preview_steps)
    return A1111Host(sd_model, resolution, preview_steps)


def train(request: TrainRequest, network: PerfusionNetwork) -> TrainOutcome:
    """Train (or resume) the requested concept on `shared.sd_model` into the network's concept folder; the caller
    holds the queue lock."""
    sd_model = shared.sd_model
    if sd_model is None:
        raise TrainingError("no model is loaded: load a checkpoint first")
    network.unload(sd_model)  # a generation that failed left its patch: A1111 deactivates only after success
    library = network.library
    sd_model = _loaded_for_training(sd_model)
    if getattr(sd_model, "lowvram", False):
        raise TrainingError(
            "Perfusion cannot train with --medvram or --lowvram (they move the text encoder off the GPU between the "
            "forward and the backward pass): restart the web UI without them to train"
        )
    resolution = request.resolution or (1024 if backend.is_sdxl(sd_model) else 512)
    host = _training_host(sd_model, resolution, request.preview_steps)
    images, masks = load_image_folder(request.images, resolution)
    data = TrainingData(images, masks)
    out = library.folder / f"{(request.name or request.word).strip()}.safetensors"
    reporter = _Reporter(out)
    shared.state.job = "perfusion-train"
    shared.state.job_count = request.steps
    # The cross-attention optimisations stay on (A1111's own trainers undo them unless an option says otherwise):
    # every one of them differentiates, and the naive attention at batch 4 holds 9-19 GB
    try:
        with trainable(host.modules):
            if request.resume:
                trainer = Trainer.resume(host, data, out, steps=request.steps, save_every=request.save_every,
                                         preview_every=request.preview_every,
                                         gradient_checkpointing=request.gradient_checkpointing)
            else:
                trainer = Trainer(host, data, request.settings(), out)
            result: TrainResult = trainer.run(
                progress=reporter.progress, on_preview=reporter.preview, should_stop=lambda: shared.state.interrupted,
            )
    finally:
        host.release()
        backend.reset_cond_cache()
        library.refresh()
    return TrainOutcome(result.concept_path, trainer.step, result.losses, reporter.previews)
