"""`make demo`: train one held-out concept on the shipped toy model and show the β knob.

It renders a few images of a look the model never saw (a red-and-yellow checked heart), trains a
concept on them with the public API and trainer every host uses, saves the concept file, and writes a
grid: the training images, then one row per prompt and one column per gate bias β.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from perfusion_core import ConceptUse, load_concept, patch_unet
from perfusion_core.diffusers_host import DiffusersHost
from perfusion_core.images import image_grid, save_image
from perfusion_core.train import Trainer, TrainingData, TrainSettings
from toyworld import world

MODEL = Path(__file__).with_name("model")
TRAINING_VIEWS = (("left", "white"), ("right", "black"), ("top", "white"), ("bottom", "black"), ("centre", "white"))
# the concept beside an ordinary object named first: trained on these too, the word is learnt in the second place
# of a sentence as well, where a two-concept prompt puts one of them (toyworld/MODEL_CARD.md, Notes)
COMPANION_VIEWS = (("right", "white", world.Obj("square", "green", "left")),
                   ("left", "black", world.Obj("triangle", "blue", "right")),
                   ("bottom", "white", world.Obj("star", "red", "top")),
                   ("top", "black", world.Obj("square", "yellow", "bottom")),
                   ("right", "black", world.Obj("triangle", "green", "left")))
PROMPTS = (
    "a {} on the left on a gray background",  # a background the training images never show
    "a {} on the right on a white background",
    "a {} at the top and a green circle at the bottom on a black background",
)
BETAS = (0.4, 0.5, 0.6, 0.7, 0.8)
LR_TARGET = 0.1  # the toy model's value targets need larger steps than the paper's 0.03 to move in 400 steps
# the paper's 0.006 drives the toy word embedding to 5x the norm of the model's own and the edit off the prompt
# (measured in toyworld/MODEL_CARD.md); every method of the benchmark shares this rate
LR_EMBEDDING = 0.002


def world_captions(n: int = 4000, seed: int = 1) -> list[str]:
    """Captions of the toy world itself: the text statistics C of its encoder come from these."""
    rng = world.scene_rng(seed, 0)
    return [world.caption(world.random_scene(rng, stage=3)) for _ in range(n)]


def training_data(concept: str, views: tuple[tuple[str, str], ...] = TRAINING_VIEWS,
                  companions: tuple[tuple[str, str, world.Obj], ...] = ()) -> TrainingData:
    """Rendered views of a held-out concept, each captioned as the world would ("a {} on the left ..."); then
    views (the concept's place, background, an ordinary object) of the concept beside that object, which the
    caption names first ("a green square on the left and a {} on the right ...")."""
    held_out = world.CONCEPTS[concept]
    scenes = [world.concept_scene(held_out, position, background, seed=k)
              for k, (position, background) in enumerate(views)]
    captions = [world.caption(scene, ("{}",)) for scene in scenes]
    for k, (position, background, companion) in enumerate(companions, start=len(views)):
        (shown,) = world.concept_scene(held_out, position, background, seed=k).objects
        scenes.append(world.Scene((companion, shown), background))
        captions.append(world.caption(scenes[-1], (None, "{}")))
    images = torch.from_numpy(np.stack([world.render(scene) for scene in scenes])).permute(0, 3, 1, 2)
    return TrainingData(images.float(), captions=tuple(captions))


def train_settings(word: str, superclass: str, steps: int = 400, **overrides) -> TrainSettings:
    """The toy world's recipe: the paper's, with batch 16 in one go, no mirroring (captions say left and right),
    the larger value-target and smaller embedding learning rates."""
    return TrainSettings(word=word, superclass=superclass, steps=steps, batch_size=16, flip=0.0,
                         lr_target=LR_TARGET, lr_embedding=LR_EMBEDDING, **overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo_output", help="output folder")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--word", default="hugsy")
    parser.add_argument("--model", default=str(MODEL), help="toy model folder (default: the shipped one)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    started = time.monotonic()
    host = DiffusersHost(args.model, captions=world_captions(), cache_dir=out / "cache", guidance=4.0)
    data = training_data("checker_heart")
    images = data.images
    settings = train_settings(args.word, "heart", args.steps)
    print(f"training '{args.word}' (superclass 'heart') on {len(images)} images for {args.steps} steps ...")
    result = Trainer(host, data, settings, out / f"{args.word}.safetensors").run()
    trained = time.monotonic() - started
    concept = load_concept(result.concept_path)
    size_kb = result.concept_path.stat().st_size / 1024
    print(f"saved {result.concept_path} ({size_kb:.1f} KB) in {trained:.0f} s; "
          f"loss {np.mean(result.losses[:20]):.3f} -> {np.mean(result.losses[-20:]):.3f}")

    rows = [torch.cat([images, torch.ones(len(BETAS) - len(images), 3, 16, 16)])[: len(BETAS)]]
    embeddings = concept.embeddings
    for prompt in PROMPTS:
        row = []
        for beta in BETAS:
            with patch_unet(host.unet, [ConceptUse(concept, beta, 0.15)]):
                row.append(host.sample([prompt.format(args.word)], [0], embeddings))
        rows.append(torch.cat(row))
    grid = image_grid(torch.cat(rows), columns=len(BETAS))
    path = save_image(grid, out / "grid.png", scale=8)  # 16 px images, shown 8x
    print(f"grid: {path} (row 1: training images; rows 2-{len(PROMPTS) + 1}: prompts below; "
          f"columns: beta {', '.join(map(str, BETAS))})")
    for prompt in PROMPTS:
        print(f"  {prompt.format(args.word)}")
    print(f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
