"""DDIM sampling with classifier-free guidance for the toy-world model, fixed noise per seed."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, SchedulerMixin, UNet2DConditionModel

from toyworld.model import ToyModel


def noise_for(seeds: list[int], res: int) -> torch.Tensor:
    """Starting noise (len(seeds) x 3 x res x res): the same seed always gives the same noise."""
    return torch.stack([torch.randn(3, res, res, generator=torch.Generator().manual_seed(s)) for s in seeds])


def ddim(train_scheduler: SchedulerMixin, steps: int) -> DDIMScheduler:
    """DDIM over the training schedule, starting at the last timestep; clip_sample off (with
    v-prediction and guidance, clipping the x0 estimate inverts colours)."""
    sched = DDIMScheduler.from_config(
        train_scheduler.config, clip_sample=False, timestep_spacing="trailing", set_alpha_to_one=True
    )
    sched.set_timesteps(steps)
    return sched


@torch.no_grad()
def sample(
    unet: UNet2DConditionModel, scheduler: SchedulerMixin, cond: torch.Tensor, uncond: torch.Tensor,
    noise: torch.Tensor, steps: int = 20, guidance: float = 4.0,
) -> torch.Tensor:
    """Images in [-1, 1] from contexts `cond` and `uncond` (each batch x tokens x width, or uncond 1 x ...)."""
    sched = ddim(scheduler, steps)
    uncond = uncond.expand_as(cond)
    context = torch.cat([uncond, cond]).to(unet.dtype)
    x = noise.to(unet.dtype)
    for t in sched.timesteps:
        out = unet(torch.cat([x, x]), t, encoder_hidden_states=context).sample
        out_u, out_c = out.chunk(2)
        x = sched.step(out_u + guidance * (out_c - out_u), t, x).prev_sample
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
