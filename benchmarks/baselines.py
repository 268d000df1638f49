"""Baseline personalisation methods for the toy-world benchmark, trained like a Perfusion concept.

Textual inversion (the word's embedding only), LoRA of rank 4 on the cross-attention projections (plus the
word's embedding), and a full fine-tune of the UNet (DreamBooth-style, plus the word's embedding, without
prior preservation). Each drives the same `TrainingHost` as the Perfusion trainer, on the same captioned
images, batches, timesteps and number of steps; only what is trained differs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from perfusion_core.layers import cross_attention_layers
from perfusion_core.train import TrainingData, TrainingHost


@dataclass
class Recipe:
    """What every method shares: steps, batch, seed, and the learning rate of the word's embedding."""

    steps: int = 400
    batch_size: int = 16
    seed: int = 0
    lr_embedding: float = 0.006


@dataclass
class Adapted:
    """A trained baseline: the concept word's embedding(s) and, for LoRA / fine-tune, weight deltas."""

    word: str
    embeddings: list[Tensor]
    losses: list[float]
    lora: dict[nn.Module, tuple[Tensor, Tensor]] = field(default_factory=dict)  # module: (A, B)
    deltas: dict[str, Tensor] = field(default_factory=dict)  # UNet parameter name: trained − original


def _fit(host: TrainingHost, data: TrainingData, word: str, superclass: str, recipe: Recipe,
         weights: list[Tensor], lr_weights: float) -> tuple[list[Tensor], list[float]]:
    """Train the word's embedding(s) and `weights` with AdamW on the diffusion objective."""
    if data.captions is None:
        raise ValueError("the baselines train on captioned images (TrainingData.captions)")
    embeddings = [e.detach().float().clone().requires_grad_(True) for e in host.prepare_words(word, superclass)]
    groups = [{"params": embeddings, "lr": recipe.lr_embedding}]
    if weights:
        groups.append({"params": weights, "lr": lr_weights})
    optimizer = torch.optim.AdamW(groups)
    generator = torch.Generator().manual_seed(recipe.seed)
    with torch.no_grad():
        latents = host.encode_images(data.images.float()).float()
    objective, losses = host.objective, []
    for _ in range(recipe.steps):
        index = torch.randint(len(latents), (recipe.batch_size,), generator=generator)
        t = torch.randint(objective.num_timesteps, (recipe.batch_size,), generator=generator).to(latents.device)
        x0 = latents[index.to(latents.device)]
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)  # CPU draws: the same on every device
        cond = host.encode([data.captions[k].format(word) for k in index.tolist()], embeddings)
        prediction = host.predict(objective.add_noise(x0, noise, t), t, cond).float()
        loss = (prediction - objective.target(x0, noise, t)).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return [e.detach() for e in embeddings], losses


def textual_inversion(host: TrainingHost, data: TrainingData, word: str, superclass: str,
                      recipe: Recipe) -> Adapted:
    """Only the new word's input embedding is trained (Gal et al.)."""
    embeddings, losses = _fit(host, data, word, superclass, recipe, [], 0.0)
    return Adapted(word, embeddings, losses)


def _lora_targets(unet: nn.Module) -> list[nn.Linear]:
    """Every cross-attention projection: to_q, to_k, to_v and to_out."""
    return [p for layer in cross_attention_layers(unet)
            for p in (layer.module.to_q, layer.module.to_k, layer.module.to_v, layer.module.to_out[0])]


@contextmanager
def lora_applied(adapters: list[Adapted], scale: float = 1.0) -> Iterator[None]:
    """Add `scale · B A x` of every adapter's LoRA to its modules' outputs while active."""
    hooks = []
    for adapted in adapters:
        for module, (a, b) in adapted.lora.items():
            def add(_module: nn.Module, args: tuple, out: Tensor, a: Tensor = a, b: Tensor = b) -> Tensor:
                return out + scale * (args[0] @ a.T @ b.T).to(out.dtype)
            hooks.append(module.register_forward_hook(add))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def lora(host: TrainingHost, data: TrainingData, word: str, superclass: str, recipe: Recipe,
         rank: int = 4, lr: float = 1e-3) -> Adapted:
    """LoRA of `rank` on every cross-attention projection, with the word's embedding (B starts at zero)."""
    generator = torch.Generator().manual_seed(recipe.seed + 1)
    modules = _lora_targets(host.unet)
    factors = {m: (torch.randn(rank, m.in_features, generator=generator).div_(m.in_features ** 0.5)
                   .to(m.weight.device).requires_grad_(),
                   torch.zeros(m.out_features, rank, device=m.weight.device, requires_grad=True)) for m in modules}
    adapted = Adapted(word, [], [], lora=factors)
    with lora_applied([adapted]):
        adapted.embeddings, adapted.losses = _fit(host, data, word, superclass, recipe,
                                                  [t for pair in factors.values() for t in pair], lr)
    adapted.lora = {m: (a.detach(), b.detach()) for m, (a, b) in factors.items()}
    return adapted


@contextmanager
def fine_tune_applied(unet: nn.Module, adapted: Adapted, scale: float = 1.0) -> Iterator[None]:
    """The UNet with `scale ×` the fine-tune's weight change while active; restored exactly afterwards."""
    parameters = dict(unet.named_parameters())
    originals = {name: parameters[name].detach().clone() for name in adapted.deltas}
    with torch.no_grad():
        for name, delta in adapted.deltas.items():
            parameters[name].add_(delta, alpha=scale)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, original in originals.items():
                parameters[name].copy_(original)


def full_fine_tune(host: TrainingHost, data: TrainingData, word: str, superclass: str, recipe: Recipe,
                   lr: float = 2e-4) -> Adapted:
    """Every UNet weight and the word's embedding (DreamBooth without prior preservation); the UNet is
    restored afterwards and the change kept as deltas."""
    parameters = dict(host.unet.named_parameters())
    originals = {name: p.detach().clone() for name, p in parameters.items()}
    host.unet.requires_grad_(True)
    try:
        embeddings, losses = _fit(host, data, word, superclass, recipe, list(parameters.values()), lr)
        deltas = {name: (p.detach() - originals[name]) for name, p in parameters.items()}
    finally:
        host.unet.requires_grad_(False)
        with torch.no_grad():
            for name, p in parameters.items():
                p.copy_(originals[name])
    return Adapted(word, embeddings, losses, deltas=deltas)
