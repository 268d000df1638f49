"""A discrete diffusion schedule and the model's own training target (ε or v prediction)."""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import PerfusionError

PREDICTIONS = ("epsilon", "v_prediction")


class DiffusionObjective:
    """Forward noising `x_t = √ᾱ x₀ + √(1−ᾱ) ε` and the target the model predicts at `t`."""

    def __init__(self, alphas_cumprod: Tensor, prediction: str = "epsilon") -> None:
        if prediction not in PREDICTIONS:
            raise PerfusionError(f"unsupported prediction type {prediction!r}: expected one of {PREDICTIONS}")
        self.alphas_cumprod = alphas_cumprod.detach().double().cpu()
        self.prediction = prediction

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def _coefficients(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        a = self.alphas_cumprod[t.cpu()].to(like.device, torch.float32)
        shape = (-1,) + (1,) * (like.ndim - 1)
        return a.sqrt().reshape(shape), (1 - a).sqrt().reshape(shape)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        signal, sigma = self._coefficients(t, x0)
        return signal * x0 + sigma * noise

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        if self.prediction == "epsilon":
            return noise
        signal, sigma = self._coefficients(t, x0)
        return signal * noise - sigma * x0
