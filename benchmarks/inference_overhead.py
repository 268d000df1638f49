"""Inference overhead of Perfusion on an SD1.5-sized UNet (diffusers default config, random weights, CPU).

Unpatched vs patched with 1, 2 and 4 concepts, and with 2 concepts painted on the left and right halves (regions),
64×64 latents, batch 2, runs interleaved, medians of the process's CPU time per forward (robust to other jobs sharing
the machine; wall time shown too).
Run: .venv/bin/python -m benchmarks.inference_overhead [--repeats N] [--threads T]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from harness.models import random_concept
from perfusion_core import ConceptUse, cross_attention_layers, patch_unet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # on a busy machine, 1 thread avoids stalls at every barrier
    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768).eval().requires_grad_(False)
    layers = cross_attention_layers(unet)
    concepts = [random_concept(layers, f"word{k}", seed=k) for k in range(4)]
    sample = torch.randn(2, 4, 64, 64)
    context = torch.randn(2, 77, 768)
    context[:, 5], context[:, 9] = concepts[0].i_star, concepts[1].i_star
    schedule = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    painted = [ConceptUse(c, region=place) for c, place in zip(concepts[:2], ("left", "right"), strict=True)]
    setups = {"unpatched": [], "1 concept": [ConceptUse(c) for c in concepts[:1]],
              "2 concepts": [ConceptUse(c) for c in concepts[:2]], "2 painted": painted,
              "4 concepts": [ConceptUse(c) for c in concepts]}
    times: dict[str, list[float]] = {name: [] for name in setups}
    walls: dict[str, list[float]] = {name: [] for name in setups}
    with torch.no_grad():
        unet(sample, 500, encoder_hidden_states=context)  # warm-up
        for _ in range(args.repeats):
            for name, chosen in setups.items():
                handle = patch_unet(unet, chosen) if chosen else None
                if handle:
                    handle.set_noise_schedule(schedule)
                cpu, wall = time.process_time(), time.perf_counter()
                unet(sample, 500, encoder_hidden_states=context)
                times[name].append(time.process_time() - cpu)
                walls[name].append(time.perf_counter() - wall)
                if handle:
                    handle.remove()
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["unpatched"]
    print(f"SD1.5-sized UNet, 64x64 latents, batch 2, {torch.get_num_threads()} threads, {args.repeats} runs each")
    print(f"{'setup':<12} {'CPU s':>8} {'ratio':>7} {'wall s':>8}")
    for name, median in medians.items():
        print(f"{name:<12} {median:>8.3f} {median / base:>7.3f} {statistics.median(walls[name]):>8.3f}")
    print(json.dumps({"ratio_1": round(medians["1 concept"] / base, 4),
                      "ratio_4": round(medians["4 concepts"] / base, 4),
                      "painted_over_unpainted_2": round(medians["2 painted"] / medians["2 concepts"], 4),
                      "unpatched_cpu_s": round(base, 4)}))


if __name__ == "__main__":
    main()
