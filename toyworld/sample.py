"""DDIM sampling with classifier-free guidance for the toy-world model, fixed noise per seed."""

from __future__ import annotations

import torch
from diffusers import SchedulerMixin, UNet2DConditionModel

from perfusion_core.diffusers_host import guided_ddim, seeded_noise
from toyworld.model import ToyModel


def noise_for(seeds: list[int], res: int) -> torch.Tensor:
    """Starting noise (len(seeds) x 3 x res x res): the same seed always gives the same noise."""
    return seeded_noise(seeds, 3, res)


@torch.no_grad()
def sample(
    unet: UNet2DConditionModel, scheduler: SchedulerMixin, cond: torch.Tensor, uncond: torch.Tensor,
    noise: torch.Tensor, steps: int = 20, guidance: float = 4.0,
) -> torch.Tensor:
    """Images in [-1, 1] from contexts `cond` and `uncond` (each batch x tokens x width, or uncond 1 x ...)."""
    context = torch.cat([uncond.expand_as(cond), cond]).to(unet.dtype)
    x = guided_ddim(lambda x2, t: unet(x2, t, encoder_hidden_states=context).sample, scheduler.config,
                    noise.to(unet.device, unet.dtype), steps, guidance)
    return x.float().clamp(-1, 1)


@torch.no_grad()
def generate(
    model: ToyModel, prompts: list[str], seeds: list[int], steps: int = 20, guidance: float = 4.0,
    batch_size: int = 100,
) -> torch.Tensor:
    """Images in [-1, 1] (len(prompts) x 3 x res x res) for `prompts`, noise seeded by `seeds`."""
    uncond = model.encode([""])
    chunks = []
    for i in range(0, len(prompts), batch_size):
        cond = model.encode(prompts[i : i + batch_size])
        noise = noise_for(seeds[i : i + batch_size], model.res)
        chunks.append(sample(model.unet, model.scheduler, cond, uncond, noise, steps, guidance))
    return torch.cat(chunks)
