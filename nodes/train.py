"""Train Perfusion: the core `Trainer` on a ComfyUI MODEL/CLIP/VAE, with live progress in the front end."""

from __future__ import annotations

import logging
import re

import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.utils
import torch
from comfy_api.v0_0_2 import io
from server import PromptServer
from torch import Tensor

from ..perfusion_core import TrainingError
from ..perfusion_core.captions import load_captions
from ..perfusion_core.images import data_url, loss_curve, preview_grid, to_pil
from ..perfusion_core.knobs import RECIPE
from ..perfusion_core.memory import CHECKPOINTING
from ..perfusion_core.patch import LOCKS
from ..perfusion_core.train import StepInfo, Trainer, TrainingData, TrainSettings, state_path_for
from .concepts import ConceptType, default_folder
from .host import ComfyHost
from .inputs import number_input, require
from .patching import current_uses

CAPTIONS = len(load_captions())

EVENT = "perfusion.train"
log = logging.getLogger("perfusion")
_NAME = re.compile(r"^[\w][\w.-]*$")


def _inputs() -> list:
    return [
        io.Model.Input("model", tooltip="The checkpoint's diffusion model (SD1.x, SD2.x or SDXL), without Apply "
                                        "Perfusion. LoRAs applied before are trained against."),
        io.Clip.Input("clip", tooltip="The checkpoint's text encoder; set CLIP skip before this node exactly as "
                                      "you will sample with it."),
        io.Vae.Input("vae", tooltip="The checkpoint's VAE, to encode the training images."),
        io.Image.Input("images", tooltip="3–8 photos of the concept, all of one size (512×512 for SD1.x, 1024 for "
                                         "SDXL), e.g. from Load Perfusion Training Images; sides are cropped to a "
                                         "multiple of 8."),
        io.String.Input("word", default="hugsy", tooltip="The trigger word to learn: a new made-up word, "
                                                         "used in prompts after Apply Perfusion."),
        io.String.Input("superclass", default="teddy", tooltip="What the concept is, as one common word "
                                                               "(dog, teddy, sculpture): the keys lock to it."),
        io.String.Input("name", default="my-concept", tooltip="File name in models/perfusion (NAME.safetensors, "
                                                              "plus NAME.state.safetensors for resuming); an "
                                                              "existing file of that name is replaced."),
        number_input(RECIPE["steps"]),
        number_input(RECIPE["lr_target"]),
        number_input(RECIPE["lr_embedding"]),
        number_input(RECIPE["batch_size"], "Images per forward pass; gradients are accumulated to an effective "
                                           "batch of 16."),
        number_input(RECIPE["seed"], control_after_generate=False),  # a rerun reproduces
        number_input(RECIPE["beta"]),
        number_input(RECIPE["tau"]),
        number_input(RECIPE["preview_every"], "Render a preview ('a photo of a WORD') every N steps; at least one "
                                              "is rendered.", default=50, min=1),
        number_input(RECIPE["save_every"], RECIPE["save_every"].meaning + " Cancelling saves the steps done so far."),
        io.Boolean.Input("resume", default=False, tooltip="Continue NAME's run from NAME.state.safetensors (its own "
                                                          "settings; steps, preview and save intervals from here)."),
        io.Int.Input("caption_count", default=CAPTIONS, min=16, max=CAPTIONS,
                     tooltip=f"Captions (of the {CAPTIONS:,} shipped) used to estimate the text-encoder statistics C. "
                             "All of them by default, as every host and the command line use, so that a concept gets "
                             "the same C wherever it is trained; fewer is faster on a CPU. Computed once per text "
                             "encoder and count, then cached."),
        io.Combo.Input("gradient_checkpointing", options=list(CHECKPOINTING), default="auto", optional=True,
                       tooltip="Recompute UNet activations in the backward pass: less memory, about 30% slower. "
                               "auto: on where the card's free memory needs it."),
        io.Mask.Input("mask", optional=True, tooltip="Optional: where the concept is (1) in each image; the loss "
                                                     "outside is weighted 0. One mask per image, or one for all."),
        io.Combo.Input("lock", options=list(LOCKS), default="local", optional=True,
                       tooltip="How the concept is applied while training, and by Apply Perfusion's 'trained' lock: "
                               "local (the paper's), global, or context (keys and values read the superclass "
                               "prompt: the concept composes with another in one prompt)."),
    ]


class TrainPerfusion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PerfusionTrain",
            display_name="Train Perfusion",
            category="perfusion",
            description="Trains a Perfusion concept (key-locked rank-1 editing) from a few images and writes it "
                        "to models/perfusion. Shows the loss and previews while it runs; cancelling saves "
                        "the steps done so far (resume continues from there).",
            inputs=_inputs(),
            outputs=[
                ConceptType.Output(display_name="concept", tooltip="The trained concept, for Apply Perfusion."),
                io.Image.Output(display_name="loss", tooltip="The loss curve of the run."),
                io.Image.Output(display_name="previews", tooltip="Every preview rendered, in step order."),
            ],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, name: str) -> bool | str:  # only `name`: ComfyUI checks the other inputs itself
        if not _NAME.match(name.removesuffix(".safetensors")):
            return f"name {name!r} must be a plain file name (letters, digits, '-', '_', '.'), without folders"
        return True

    @classmethod
    def execute(cls, model, clip, vae, images: Tensor, word: str, superclass: str, name: str, steps: int,
                lr_target: float, lr_embedding: float, batch_size: int, seed: int, beta: float, tau: float,
                preview_every: int, save_every: int, resume: bool, caption_count: int,
                gradient_checkpointing: str = "auto", mask: Tensor | None = None, lock: str = "local"
                ) -> io.NodeOutput:
        require(model, comfy.model_patcher.ModelPatcher, "model", "a MODEL")
        require(clip, comfy.sd.CLIP, "clip", "a CLIP")
        require(vae, comfy.sd.VAE, "vae", "a VAE")
        require(images, Tensor, "images", "an IMAGE")
        if mask is not None:
            require(mask, Tensor, "mask", "a MASK")
        if current_uses(model):
            raise TrainingError("the model already carries Apply Perfusion: connect the checkpoint's model directly")
        out = default_folder() / f"{name.removesuffix('.safetensors')}.safetensors"
        out.parent.mkdir(parents=True, exist_ok=True)
        report = Report(cls.hidden.unique_id, steps)
        with torch.inference_mode(False), torch.enable_grad():
            host = ComfyHost(model, clip, vae, load_captions()[:caption_count])
            host.load()
            data = training_data(images, mask)
            intervals = {"steps": steps, "save_every": save_every, "preview_every": preview_every,
                         "gradient_checkpointing": CHECKPOINTING[gradient_checkpointing]}
            if resume:
                if not state_path_for(out).is_file():
                    raise TrainingError(f"no training state {state_path_for(out).name} in {out.parent}: switch "
                                        "resume off to start a new run, or give the name of an earlier run")
                trainer = Trainer.resume(host, data, out, **intervals)
            else:
                settings = TrainSettings(word=word.strip(), superclass=superclass.strip(), lr_target=lr_target,
                                         lr_embedding=lr_embedding, batch_size=batch_size, seed=seed, beta=beta,
                                         tau=tau, preview_seeds=(seed,), lock=lock, **intervals)
                trainer = Trainer(host, data, settings, out)
            # at least one preview: a multiple of the interval falls within the steps still to run
            trainer.settings.preview_every = max(1, min(preview_every, trainer.settings.steps - trainer.step))
            report.start(trainer)
            try:
                result = trainer.run(progress=report.step, on_preview=report.preview, should_stop=report.stop,
                                     moment_progress=report.moment)
            except comfy.model_management.InterruptProcessingException:
                kept = state_path_for(out)
                log.info("Train Perfusion cancelled at step %d; %s", trainer.step,
                         f"{kept.name} is kept" if kept.is_file() else "no checkpoint was written yet")
                raise
        previews = torch.cat([batch for _, batch in result.previews])
        log.info("Train Perfusion: %s written after %d steps (loss %.4f)", result.concept_path, trainer.step,
                 result.losses[-1])
        return io.NodeOutput(result.concept, to_comfy(loss_curve(result.losses)[None]), to_comfy(previews))


def training_data(images: Tensor, mask: Tensor | None) -> TrainingData:
    """ComfyUI IMAGE `(N, H, W, C)` and MASK `(N|1, h, w)` as the core's `TrainingData`, cropped to ×8."""
    pixels = images[..., :3].movedim(-1, 1).float().clone()  # a normal tensor, out of inference mode
    h, w = pixels.shape[-2] // 8 * 8, pixels.shape[-1] // 8 * 8
    if h == 0 or w == 0:
        raise TrainingError(f"the images are {pixels.shape[-1]}×{pixels.shape[-2]}; they need at least 8×8 pixels")
    top, left = (pixels.shape[-2] - h) // 2, (pixels.shape[-1] - w) // 2
    masks = None
    if mask is not None:
        masks = mask.float().clone().reshape(-1, *mask.shape[-2:])
        if masks.shape[0] not in (1, pixels.shape[0]):
            raise TrainingError(f"{masks.shape[0]} masks for {pixels.shape[0]} images: give one mask per image, "
                                "or one for all")
        masks = torch.nn.functional.interpolate(masks[:, None], size=pixels.shape[-2:], mode="bilinear")[:, 0]
        masks = masks.expand(pixels.shape[0], -1, -1)[:, top:top + h, left:left + w].contiguous()
    return TrainingData(pixels[..., top:top + h, left:left + w].contiguous(), masks)


def to_comfy(images: Tensor) -> Tensor:
    """`(N, 3, H, W)` to ComfyUI's IMAGE `(N, H, W, 3)`."""
    return images.movedim(1, -1).contiguous().float().clamp(0, 1)


class Report:
    """The node's progress bar and `perfusion.train` messages to the front end; notices cancel."""

    def __init__(self, node_id: str, steps: int) -> None:
        self.node_id, self.steps = node_id, steps
        self.bar = comfy.utils.ProgressBar(steps, node_id=node_id)
        self.losses: list[float] = []  # the trainer's own list: a resumed run shows its earlier steps too

    def _send(self, **data) -> None:
        server = PromptServer.instance
        server.send_sync(EVENT, {"node": self.node_id, **data}, server.client_id)

    def start(self, trainer: Trainer) -> None:
        self.steps, self.losses = trainer.settings.steps, trainer.losses
        self.bar.update_absolute(trainer.step, self.steps)
        self._send(phase="training", step=trainer.step, steps=self.steps, losses=self.losses)

    def moment(self, done: int, total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        self._send(phase="statistics", done=done, total=total)

    def step(self, info: StepInfo) -> None:
        log.info("Train Perfusion step %d/%d: loss %.4f, %.1f s, %.0f s left", info.step, info.steps, info.loss,
                 info.elapsed, info.eta)
        self.bar.update_absolute(info.step, info.steps)
        self._send(phase="training", step=info.step, steps=info.steps, loss=info.loss, losses=self.losses,
                   eta=info.eta)

    def preview(self, step: int, images: Tensor) -> None:
        grid = preview_grid(images)
        self.bar.update_absolute(step, self.steps, ("JPEG", to_pil(grid), 512))  # ComfyUI's own node preview
        self._send(phase="preview", step=step, image=data_url(grid, max_side=512))

    @staticmethod
    def stop() -> bool:
        comfy.model_management.throw_exception_if_processing_interrupted()
        return False
