"""Cost of one training step: Perfusion vs LoRA (rank 4 on the attention projections) vs full fine-tune.

SD1.5-sized UNet (diffusers default config, context 768, random weights) and a CLIP-L-sized text encoder,
64x64 latents, batch 1, float32, CPU (or --device cuda). Each method runs in its own process so that its
peak memory is its own; time is the median over --steps steps after one warm-up step, in process CPU time
on CPU (robust to other jobs sharing the machine) and wall time on CUDA.
Run: .venv/bin/python -m benchmarks.train_step [--steps N] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from diffusers import UNet2DConditionModel
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from perfusion_core import Concept, ConceptUse, build_patch, cross_attention_layers
from perfusion_core.patch import install_patch

METHODS = ("perfusion", "lora", "full")


class LoRALinear(nn.Module):
    """`W x + B A x` with rank-r factors; A random, B zero (the usual initialisation)."""

    def __init__(self, base: nn.Linear, rank: int = 4) -> None:
        super().__init__()
        self.base = base
        self.down = nn.Parameter(torch.randn(rank, base.in_features) / rank)
        self.up = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.down.T) @ self.up.T


def _add_lora(unet: nn.Module) -> list[nn.Parameter]:
    params = []
    for module in list(unet.modules()):
        for name in ("to_q", "to_k", "to_v"):
            child = getattr(module, name, None)
            if isinstance(child, nn.Linear):
                wrapped = LoRALinear(child)
                setattr(module, name, wrapped)
                params += [wrapped.down, wrapped.up]
        out = getattr(module, "to_out", None)
        if isinstance(out, nn.ModuleList) and isinstance(out[0], nn.Linear):
            out[0] = LoRALinear(out[0])
            params += [out[0].down, out[0].up]
    return params


def _perfusion(unet: nn.Module, encoder: CLIPTextModel):
    """Trainable o*_V per layer and a trainable word embedding that reaches the context through the encoder."""
    layers = cross_attention_layers(unet)
    d, device = layers[0].context_dim, encoder.device
    i_star = torch.randn(d, device=device)
    targets = {layer.name: torch.zeros(layer.v_dim, device=device, requires_grad=True) for layer in layers}
    embedding = encoder.get_input_embeddings().weight[100].detach().clone().requires_grad_(True)
    concept = Concept(word="hugsy", superclass="teddy", family="sd1", context_dim=d, text_encoder_layer="last",
                      i_star=i_star, v=i_star.clone(), i_super=torch.randn(d, device=device), embeddings=[embedding],
                      o_v=targets)
    install_patch(unet, layers, build_patch(layers, [ConceptUse(concept, 0.75, 0.1)]))
    ids = torch.randint(0, 1000, (1, 77), device=device)
    ids[0, 5] = 100

    def context() -> torch.Tensor:
        table = encoder.get_input_embeddings()
        hook = table.register_forward_hook(lambda m, a, out: torch.where((a[0] == 100)[..., None], embedding, out))
        try:
            return encoder(ids).last_hidden_state
        finally:
            hook.remove()

    return [*targets.values(), embedding], context


def run_one(method: str, steps: int, device: str) -> dict:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768).to(device).requires_grad_(False)
    encoder = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                           num_attention_heads=12, max_position_embeddings=77))
    encoder = encoder.to(device).eval().requires_grad_(False)
    fixed_context = torch.randn(1, 77, 768, device=device)
    if method == "perfusion":
        params, context = _perfusion(unet, encoder)
    elif method == "lora":
        params, context = _add_lora(unet), lambda: fixed_context
    else:
        params, context = list(unet.parameters()), lambda: fixed_context
        unet.requires_grad_(True)
    unet.to(device)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    latents, noise = torch.randn(1, 4, 64, 64, device=device), torch.randn(1, 4, 64, 64, device=device)
    baseline = _peak_bytes(device)
    times = []
    clock = time.perf_counter if device.startswith("cuda") else time.process_time
    for _ in range(steps + 1):
        start = clock()
        loss = (unet(latents, 500, encoder_hidden_states=context()).sample - noise).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(clock() - start)
    trainable = sum(p.numel() for p in params)
    return {"method": method, "median_s": statistics.median(times[1:]), "peak_bytes": _peak_bytes(device),
            "step_bytes": _peak_bytes(device) - baseline, "trainable": trainable}


def _peak_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)  # one method, in a child process
    args = parser.parse_args()
    if args.method:
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(run_one(args.method, args.steps, args.device)))
        return
    results = {}
    for method in METHODS:
        out = subprocess.run([sys.executable, "-m", "benchmarks.train_step", "--method", method,
                              "--steps", str(args.steps), "--device", args.device, "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True)
        results[method] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"SD1.5-sized UNet, 64x64 latents, batch 1, {args.device}, median of {args.steps} steps")
    print(f"{'method':<10} {'trainable':>12} {'step s':>8} {'peak GB':>8} {'step GB':>8}")
    for r in results.values():
        print(f"{r['method']:<10} {r['trainable']:>12,} {r['median_s']:>8.2f} {r['peak_bytes'] / 2**30:>8.2f} "
              f"{r['step_bytes'] / 2**30:>8.2f}")
    p, lora, full = results["perfusion"], results["lora"], results["full"]
    print(json.dumps({
        "time_vs_lora": round(p["median_s"] / lora["median_s"], 3),
        "mem_vs_lora": round(p["peak_bytes"] / lora["peak_bytes"], 3),
        "time_vs_full": round(p["median_s"] / full["median_s"], 3),
        "mem_vs_full": round(p["peak_bytes"] / full["peak_bytes"], 3),
    }))


if __name__ == "__main__":
    main()
