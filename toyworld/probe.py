"""A small CNN that reads a toy-world image back into attributes; used only for scoring.

It predicts the background and, for each of the five positions (slots), the shape and texture of the
object there or "none", and which colours it has (one for a plain object, two for a textured one). A
one-object image is read at the slot the probe finds most surely occupied.
`features` gives the penultimate layer (a vector per image) for similarity between images.

Train: python -m toyworld.probe --threads 1   (writes toyworld/probe.safetensors)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from toyworld import world
from toyworld.world import BACKGROUNDS, COLOURS, PATTERNS, POSITIONS, SHAPES, Scene

WEIGHTS = Path(__file__).with_name("probe.safetensors")
SLOTS = tuple(POSITIONS)
NONE = "none"


class Probe(nn.Module):
    """CNN: res x res RGB in [-1, 1] -> background logits, per-slot shape/pattern logits and colour logits (one per
    colour: is it in the object)."""

    def __init__(self, res: int = 16, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.res = res
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * (res // 4) ** 2, feature_dim), nn.GELU(),
        )
        self.background = nn.Linear(feature_dim, len(BACKGROUNDS))
        self.shape = nn.Linear(feature_dim, len(SLOTS) * (len(SHAPES) + 1))
        self.colour = nn.Linear(feature_dim, len(SLOTS) * len(COLOURS))
        self.pattern = nn.Linear(feature_dim, len(SLOTS) * (len(PATTERNS) + 1))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer vector per image (batch x feature_dim)."""
        return self.body(images)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(images)
        n = images.shape[0]
        return {
            "background": self.background(f),
            "shape": self.shape(f).view(n, len(SLOTS), len(SHAPES) + 1),  # class 0 = none
            "colour": self.colour(f).view(n, len(SLOTS), len(COLOURS)),
            "pattern": self.pattern(f).view(n, len(SLOTS), len(PATTERNS) + 1),
        }


def targets(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """Targets of the probe's heads: class indices (0 = empty slot), and colours as one 0/1 per colour."""
    bg = torch.tensor([list(BACKGROUNDS).index(s.background) for s in scenes])
    shape = torch.zeros(len(scenes), len(SLOTS), dtype=torch.long)
    pattern = torch.zeros_like(shape)
    colour = torch.zeros(len(scenes), len(SLOTS), len(COLOURS))
    for i, s in enumerate(scenes):
        for o in s.objects:
            slot = SLOTS.index(o.position)
            shape[i, slot] = SHAPES.index(o.shape) + 1
            pattern[i, slot] = PATTERNS.index(o.pattern) + 1
            for c in o.colours.split("+"):
                colour[i, slot, list(COLOURS).index(c)] = 1
    return {"background": bg, "shape": shape, "colour": colour, "pattern": pattern}


def loss(out: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of the class heads plus the colour head's binary cross-entropy."""
    ce = sum(F.cross_entropy(out[k].flatten(0, -2), target[k].flatten()) for k in ("background", "shape", "pattern"))
    return ce + F.binary_cross_entropy_with_logits(out["colour"], target["colour"]) * len(COLOURS)


@torch.no_grad()
def read(probe: Probe, images: torch.Tensor) -> list[dict[str, object]]:
    """Attributes per image: background, `objects` {slot: look} (`world.Obj.look`: shape, colours, pattern), and
    the main object's shape/colour/pattern/position (the slot most surely occupied)."""
    out = probe(images)
    bg = out["background"].argmax(-1)
    p_shape = out["shape"].softmax(-1)
    occupied = 1 - p_shape[..., 0]
    main = occupied.argmax(-1)
    shape = p_shape[..., 1:].argmax(-1)
    pattern = out["pattern"][..., 1:].argmax(-1)
    by_colour = out["colour"].argsort(-1, descending=True)
    results = []
    for i in range(images.shape[0]):
        looks = {}
        for k in range(len(SLOTS)):
            texture = PATTERNS[int(pattern[i, k])]
            colours = sorted(list(COLOURS)[int(c)] for c in by_colour[i, k, : 1 if texture == "plain" else 2])
            looks[SLOTS[k]] = (SHAPES[int(shape[i, k])], "+".join(colours), texture)
        j = SLOTS[int(main[i])]
        results.append({
            "background": list(BACKGROUNDS)[int(bg[i])], "position": j,
            "objects": {slot: look for k, (slot, look) in enumerate(looks.items()) if occupied[i, k] > 0.5},
            **dict(zip(("shape", "colour", "pattern"), looks[j], strict=True)),
        })
    return results


def score(probe: Probe, images: torch.Tensor, scenes: list[Scene]) -> dict[str, float]:
    """Fraction of images where the probe finds each prompted attribute.

    One-object scenes: shape, colour (a textured object's two colours), pattern, position, background and `all`
    (all right). Two-object scenes: `pair` (both objects right at their places and the background right).
    """
    reads = read(probe, images)
    single = [(r, s) for r, s in zip(reads, scenes, strict=True) if len(s.objects) == 1]
    pairs = [(r, s) for r, s in zip(reads, scenes, strict=True) if len(s.objects) == 2]
    out: dict[str, float] = {}
    if single:
        keys = ("shape", "colour", "pattern", "position", "background")
        hits = {k: [r[k] == s.attributes()[k] for r, s in single] for k in keys}
        out.update({k: float(np.mean(v)) for k, v in hits.items()})
        out["all"] = float(np.mean([all(h) for h in zip(*hits.values(), strict=True)]))
    if pairs:
        out["pair"] = float(np.mean([
            r["background"] == s.background and r["objects"] == {o.position: o.look for o in s.objects}
            for r, s in pairs
        ]))
    return out


def load(path: str | Path = WEIGHTS, res: int = 16) -> Probe:
    """The committed probe weights, in eval mode."""
    probe = Probe(res)
    probe.load_state_dict(load_file(str(path)))
    return probe.eval()


def _data(seed: int, n: int, res: int) -> tuple[torch.Tensor, list[Scene]]:
    images, _, scenes = world.batch(seed, 0, n, stage=3, res=res, held_out=False)
    return torch.from_numpy(images), scenes


def train(seed: int = 0, res: int = 16, n: int = 24000, epochs: int = 12, batch: int = 128) -> Probe:
    """Train a probe on `n` stage-3 generator images, concepts' looks included (mild noise augmentation for model
    samples)."""
    torch.manual_seed(seed)
    images, scenes = _data(seed + 1000, n, res)
    tg = targets(scenes)
    probe = Probe(res)
    opt = torch.optim.AdamW(probe.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * (n // batch))
    for _ in range(epochs):
        order = torch.randperm(n)
        for i in range(n // batch):
            idx = order[i * batch : (i + 1) * batch]
            x = images[idx] + torch.rand(len(idx), 1, 1, 1) * 0.15 * torch.randn_like(images[idx])
            batch_loss = loss(probe(x), {k: v[idx] for k, v in tg.items()})
            opt.zero_grad()
            batch_loss.backward()
            opt.step()
            sched.step()
    return probe.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--res", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=WEIGHTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    probe = train(args.seed, args.res)
    save_file(probe.state_dict(), str(args.out))
    images, scenes = _data(args.seed + 2000, 4000, args.res)
    print(f"trained in {time.time() - start:.0f}s; accuracy on fresh images:", score(probe, images, scenes))


if __name__ == "__main__":
    main()
