"""Overhead of Apply Perfusion in a real ComfyUI (`COMFYUI_PATH`): one KSampler run on the random-weight
SD1.5-shaped test checkpoint, without the node and with 1 and 4 concepts, runs interleaved, medians.

Each timed run changes only the seed, so ComfyUI re-executes KSampler, VAEDecode and SaveImage; the time
is the server's own (execution_start to execution_success). Goal: ≤ 1.03× (1 concept), ≤ 1.06× (4).
Run: COMFYUI_PATH=... COMFYUI_PYTHON=... .venv/bin/python -m benchmarks.comfyui_apply [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from harness.comfy.graphs import sample_graph, test_concept, write_concept
from harness.comfy.server import cache_dir, comfyui_tree, running_server

WORDS = ("hugsy", "wugsy", "bugsy", "mugsy")


def seconds(entry: dict) -> float:
    stamps = {kind: data["timestamp"] for kind, data in entry["status"]["messages"]}
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    tree = comfyui_tree()
    if tree is None:
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout (and COMFYUI_PYTHON to its interpreter)")
    with running_server(tree, threads=args.threads) as server:
        layers = cache_dir() / "models" / "tiny-sd15.layers.json"
        names = [write_concept(server.perfusion_dir, w, test_concept(layers, w, k)) for k, w in enumerate(WORDS)]
        prompt = "a photo of " + " and ".join(WORDS)
        setups = {"no concept": (), "1 concept": names[:1], "4 concepts": names}
        times: dict[str, list[float]] = {name: [] for name in setups}
        for repeat in range(args.repeats + 1):  # the first round warms up (loads, caches)
            for name, chosen in setups.items():
                graph = sample_graph(prompt=prompt, seed=repeat + 1, steps=args.steps, size=args.size,
                                     concepts=tuple({"name": n} for n in chosen), save=False)
                entry = server.run(graph)
                if repeat:
                    times[name].append(seconds(entry))
    medians = {name: statistics.median(t) for name, t in times.items()}
    base_s = medians["no concept"]
    print(f"ComfyUI KSampler, SD1.5-shaped test checkpoint, {args.size}x{args.size}, {args.steps} steps, "
          f"{args.threads} thread(s), {args.repeats} runs each")
    print(f"{'setup':<12} {'median s':>9} {'ratio':>7}")
    for name, median in medians.items():
        print(f"{name:<12} {median:>9.3f} {median / base_s:>7.3f}")
    print(json.dumps({"ratio_1": round(medians["1 concept"] / base_s, 4),
                      "ratio_4": round(medians["4 concepts"] / base_s, 4), "no_concept_s": round(base_s, 4),
                      "size": args.size, "steps": args.steps, "threads": args.threads, "repeats": args.repeats}))


if __name__ == "__main__":
    main()
