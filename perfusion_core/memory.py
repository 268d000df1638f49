"""Whether a training run needs gradient checkpointing to fit the card it runs on.

The estimate is the UNet's activations kept for the backward pass of one image at the family's native resolution in
half precision without checkpointing, measured by `benchmarks/train_memory.py` (real shapes, fake tensors).
"""

from __future__ import annotations

import torch

CHECKPOINTING = {"auto": None, "on": True, "off": False}
"""The gradient-checkpointing choice as hosts offer it; `auto` is on where the card's free memory needs it."""
ACTIVATIONS_GIB = {"sd1": 0.75, "sd2": 0.75, "sdxl": 5.04}
HEADROOM = 1.25  # the caching allocator's fragmentation and the text encoder's activations


def use_gradient_checkpointing(setting: bool | None, family: str, batch_size: int, device: torch.device) -> bool:
    """`setting` if given; else on where the device's free memory is below the activations' estimate (a CPU: off)."""
    if setting is not None:
        return bool(setting)
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    need = ACTIVATIONS_GIB.get(family, max(ACTIVATIONS_GIB.values())) * batch_size * HEADROOM * 2**30
    return free < need
