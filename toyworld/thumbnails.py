"""The example workflows' thumbnails, rendered on the shipped toy model with the core the nodes use.

Each `example_workflows/NAME.jpg` shows what its workflow does, on the demo's two held-out concepts of the toy
world (a checked heart "hugsy", a striped star "stippy"), each trained for 400 steps:
- train-one-concept: the training images, then the previews the trainer renders as it goes;
- apply-with-gate-sweep: one prompt and seed across the gate bias β;
- two-concepts-one-image: both concepts, each with its own gate, in one prompt (several seeds), trained
  context-locked with the companion views as well (`demo.context_data`), as the demo trains them;
- paint-two-concepts: the same two concepts, the checked heart painted on the left half and the striped star on the
  right (regions at the default weight, one pass), on each background.
Prompts follow the model's grammar (`toyworld.model.places_first`).

    python -m toyworld.thumbnails [--out example_workflows]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from perfusion_core import Concept, ConceptUse
from perfusion_core.diffusers_host import DiffusersHost
from perfusion_core.images import image_grid, save_image
from perfusion_core.train import Trainer
from toyworld import demo, world
from toyworld import model as toymodel

EXAMPLES = Path(__file__).resolve().parents[1] / "example_workflows"
CONCEPTS = dict(zip(demo.PAIR_WORDS, demo.PAIR, strict=True))
PLACE_FIRST = toymodel.places_first(demo.MODEL)
PREVIEW, SWEEP = demo.prompts(demo.PAIR[0], PLACE_FIRST)[1:]
SCALE = 8  # 16-pixel images, shown 8× with nearest-neighbour


def save_jpg(images: torch.Tensor, columns: int, path: Path) -> Path:
    """A grid of `(N, 3, h, w)` images in [0, 1], enlarged `SCALE`×."""
    return save_image(image_grid(images, columns=columns), path, scale=SCALE)


def train(host: DiffusersHost, word: str, work: Path, preview_every: int = 0, context: bool = False
          ) -> tuple[Concept, list[torch.Tensor]]:
    """One concept trained with the toy world's recipe (on its views; with `context`, context-locked on its views
    and the companion views); its previews (seed 0) every `preview_every` steps."""
    concept = world.CONCEPTS[CONCEPTS[word]]
    settings = demo.train_settings(word, concept.superclass, preview_every=preview_every,
                                   preview_prompts=(PREVIEW,), lock="context" if context else "local")
    data = (demo.context_data if context else demo.training_data)(CONCEPTS[word], place_first=PLACE_FIRST)
    name = f"{word}.context" if context else word
    result = Trainer(host, data, settings, work / f"{name}.safetensors").run()
    return result.concept, [images for _, images in result.previews]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=EXAMPLES)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="perfusion-thumbnails-") as work:
        host = DiffusersHost(demo.MODEL, captions=demo.world_captions(place_first=PLACE_FIRST),
                             cache_dir=Path(work), guidance=4.0)
        hugsy, previews = train(host, "hugsy", Path(work), preview_every=80)
        training = demo.training_data("checker_heart").images
        print(save_jpg(torch.cat([training, *previews]), len(training), args.out / "train-one-concept.jpg"))

        sweep = []
        host.install_word("hugsy", hugsy.embeddings)
        for beta in demo.BETAS:
            sweep.append(demo.sample(host, [ConceptUse(hugsy, beta)], [SWEEP.format("hugsy")], [0]))
        print(save_jpg(torch.cat(sweep), len(sweep), args.out / "apply-with-gate-sweep.jpg"))

        # separately trained concepts, context-locked, each also seen beside an ordinary object named first
        hugsy, _ = train(host, "hugsy", Path(work), context=True)
        stippy, _ = train(host, "stippy", Path(work), context=True)
        host.install_word("hugsy", hugsy.embeddings)
        host.install_word("stippy", stippy.embeddings)
        layouts = tuple(("left", "right", background) for background in world.BACKGROUNDS for _ in range(2))
        prompts = demo.pair_prompts(demo.PAIR_WORDS, PLACE_FIRST, layouts)
        seeds = list(range(len(prompts)))
        pair = demo.sample(host, [ConceptUse(hugsy), ConceptUse(stippy)], prompts, seeds)
        print(save_jpg(pair, len(pair), args.out / "two-concepts-one-image.jpg"))

        painted = [ConceptUse(hugsy, region="left"), ConceptUse(stippy, region="right")]
        with demo.patched(host, painted, prompts):
            pair = host.sample(prompts, seeds)
        print(save_jpg(pair, len(pair), args.out / "paint-two-concepts.jpg"))


if __name__ == "__main__":
    main()
