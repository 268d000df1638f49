"""What autograd needs of a host's frozen model: tensors it may save for the backward pass, and forwards recomputed
there instead of kept."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.utils.checkpoint
from torch import Tensor, nn


def normal_tensors(module: nn.Module) -> None:
    """Replace tensors made under inference mode (ComfyUI and Forge load weights so) by equal normal ones, which
    autograd can save for the backward pass; the model keeps these. Cheap when there are none, so a host may call it
    before every use (a reload under inference mode makes new ones)."""
    with torch.inference_mode(False):
        for m in module.modules():
            for name, p in list(m._parameters.items()):
                if p is not None and p.is_inference():
                    m._parameters[name] = nn.Parameter(p.clone(), requires_grad=False)
            for name, b in list(m._buffers.items()):
                if b is not None and b.is_inference():
                    m._buffers[name] = b.clone()


def checkpointed(forward: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """`forward` recomputed in the backward pass. It reads a copy of its input: some hosts' blocks (Forge's) add
    residuals onto their input in place, which would change the input kept for the recomputation."""

    def on_copy(x: Tensor, *args, **kwargs) -> Tensor:
        return forward(x.clone(), *args, **kwargs)

    return functools.partial(torch.utils.checkpoint.checkpoint, on_copy, use_reentrant=False)
