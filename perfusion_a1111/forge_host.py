"""Forge's own backend as a `perfusion_core.train.TrainingHost`: its text-processing engines, its UNet and its
prediction schedule, with what autograd needs of them."""

from __future__ import annotations

import torch
from modules import shared
from modules.prompt_parser import SdConditioning
from torch import Tensor, nn

from perfusion_core import PerfusionError
from perfusion_core.objective import DiffusionObjective

from . import backend
from .host import A1111Host


class ForgeHost(A1111Host):
    """Forge's own backend: its text-processing engines, its UNet patcher and its prediction schedule."""

    def __init__(self, sd_model, resolution: int, preview_steps: int = 20, cfg_scale: float = 7.0) -> None:
        sd_model.set_clip_skip(int(getattr(shared.opts, "CLIP_stop_at_last_layers", 1) or 1))  # as txt2img does
        super().__init__(sd_model, resolution, preview_steps, cfg_scale)
        # Forge's transformer blocks add residuals in place onto tensors their layer norms keep for the backward
        # pass: while training, the norms read copies
        self._copying = [norm.register_forward_pre_hook(_copy_input) for block in self.unet.modules()
                         if type(block).__name__ == "BasicTransformerBlock"
                         for norm in block.children() if isinstance(norm, nn.LayerNorm)]

    def release(self) -> None:
        super().release()
        for hook in self._copying:
            hook.remove()

    @property
    def modules(self) -> list[nn.Module]:
        return [self.sd_model.forge_objects.unet.model, *self.text_encoders]

    @property
    def text_encoders(self) -> list[nn.Module]:
        return [self.sd_model.forge_objects.clip.cond_stage_model]

    def _objective(self) -> DiffusionObjective:
        predictor = self.sd_model.forge_objects.unet.model.predictor
        if type(predictor).__name__ != "Prediction" or predictor.prediction_type not in ("epsilon", "v_prediction"):
            raise PerfusionError(
                f"this model's schedule ({type(predictor).__name__}, {predictor.prediction_type}) is not a discrete "
                "ε or v-prediction one: Perfusion trains on SD1.x, SD2.x and SDXL checkpoints"
            )
        return DiffusionObjective(predictor.alphas_cumprod.cpu(), predictor.prediction_type)

    def _compute_dtype(self) -> torch.dtype:
        return self.sd_model.forge_objects.unet.model.computation_dtype

    def _input_embedding(self, model, word: str) -> Tensor:
        return backend.forge_token_table(model)[model.tokenize([word])[0][0]]

    def _conditioning(self, batch: SdConditioning) -> Tensor | dict[str, Tensor]:
        # Forge's method runs under inference mode; its body, with gradients, reaching the word's embedding
        from backend.text_processing import classic_engine

        cond = type(self.sd_model).get_learned_conditioning.__wrapped__(self.sd_model, batch)
        classic_engine.last_extra_generation_params = {}  # else every step's "TI" note lands in the next infotext
        return cond

    def _apply_unet(self, noisy: Tensor, t: Tensor, context: Tensor, vector: Tensor | None) -> Tensor:
        dtype = self.sd_model.forge_objects.unet.model.computation_dtype
        return self.unet(noisy.to(dtype), t.float(), context=context.to(dtype),
                         y=None if vector is None else vector.to(dtype), transformer_options={})


def _copy_input(_module: nn.Module, args: tuple) -> tuple:
    return (args[0].clone(), *args[1:])
