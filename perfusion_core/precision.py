"""The training precision policy, shared by every host.

The trainable state (value targets, word embeddings, optimizer moments) is float32 on the host's device; the model
computes in the host's dtype. float16 compute gets dynamic loss scaling: the loss is a mean over B·C·H·W divided by
the accumulation count, so unscaled its gradient falls below float16's normal range at SD sizes and rounds to zero.
bfloat16 has float32's range and needs none. The gate and the projector always run in float32 (`float32_math`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from .errors import TrainingError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """`auto`: CUDA when present, else the CPU."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """The compute dtype for `name` (auto, fp32, bf16, fp16) on `device`. `auto`: bf16 on CUDA where the card has it,
    else fp16 (with loss scaling); fp32 elsewhere."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in PRECISIONS:
        raise TrainingError(f"unknown precision {name!r}: use one of auto, {', '.join(PRECISIONS)}")
    return PRECISIONS[name]


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
    except RuntimeError:  # a device type autocast does not know (meta)
        return False


@contextlib.contextmanager
def float32_math(device: torch.device) -> Iterator[None]:
    """Autocast off for the enclosed float32 math (the gate and the projector), if it is on."""
    if _autocast_on(device.type):
        with torch.autocast(device.type, enabled=False):
            yield
    else:
        yield


class LossScaler:
    """Dynamic loss scaling for float16 compute: scale the loss, unscale the gradients, skip a step whose gradients
    overflowed and halve the scale, double it after `growth_interval` good steps. Disabled, it only checks that the
    gradients are finite."""

    def __init__(self, enabled: bool, scale: float = 2.0**16, growth_interval: int = 200,
                 min_scale: float = 1.0) -> None:
        self.enabled = enabled
        self.scale = scale if enabled else 1.0
        self.growth_interval, self.min_scale = growth_interval, min_scale
        self.good_steps = 0

    def scaled(self, loss: Tensor) -> Tensor:
        return loss * self.scale if self.enabled else loss

    def unscale(self, params: Iterable[Tensor]) -> bool:
        """Divide the gradients by the scale in place; return whether all of them are finite."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return True
        if self.enabled:
            for g in grads:
                g.mul_(1.0 / self.scale)
        return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())

    def update(self, finite: bool) -> bool:
        """Adapt the scale after a step; return whether an overflow can still be explained by it (else the
        gradient itself is broken)."""
        if finite:
            self.good_steps += 1
            if self.enabled and self.good_steps >= self.growth_interval:
                self.scale, self.good_steps = self.scale * 2, 0
            return True
        self.good_steps = 0
        if not self.enabled or self.scale / 2 < self.min_scale:
            return False
        self.scale /= 2
        return True

    def state(self) -> Tensor:
        return torch.tensor([self.scale, self.good_steps], dtype=torch.float64)

    def load_state(self, state: Tensor) -> None:
        scale, good = state.tolist()
        if self.enabled:
            self.scale, self.good_steps = scale, int(good)
