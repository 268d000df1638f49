"""The example workflows' thumbnails, rendered on the shipped toy model with the core the nodes use.

Each `example_workflows/NAME.jpg` shows what its workflow does, on the demo's two held-out concepts of the toy
world (a checked heart "hugsy", a striped star "stippy"), each trained for 400 steps:
- train-one-concept: the training images, then the previews the trainer renders as it goes;
- apply-with-gate-sweep: one prompt and seed across the gate bias β;
- two-concepts-one-image: both concepts, each with its own gate, in one prompt (several seeds), trained with
  the companion views as well (`demo.COMPANION_VIEWS`);
- paint-two-concepts: the two concepts trained on their five views alone (regions did better with them than with
  the companion views in the benchmark), the checked heart painted on the left half and the striped star on the
  right (regions at the default weight, one pass), on each background.
Prompts follow the model's grammar (`toyworld.model.places_first`).

    python -m toyworld.thumbnails [--out example_workflows]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from perfusion_core import Concept, ConceptUse, patch_unet
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


def train(host: DiffusersHost, word: str, work: Path, preview_every: int = 0, companions: tuple = ()
          ) -> tuple[Concept, list[torch.Tensor]]:
    """One concept trained with the toy world's recipe (on its views, then `companions`); its previews (seed 0)
    every `preview_every` steps."""
    concept = world.CONCEPTS[CONCEPTS[word]]
    settings = demo.train_settings(word, concept.superclass, preview_every=preview_every,
                                   preview_prompts=(PREVIEW,))
    data = demo.training_data(CONCEPTS[word], companions=companions, place_first=PLACE_FIRST)
    name = f"{word}.companions" if companions else word
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
        for beta in demo.BETAS:
            with patch_unet(host.unet, [ConceptUse(hugsy, beta)]):
                sweep.append(host.sample([SWEEP.format("hugsy")], [0], hugsy.embeddings))
        print(save_jpg(torch.cat(sweep), len(sweep), args.out / "apply-with-gate-sweep.jpg"))
        alone = {"hugsy": hugsy, "stippy": train(host, "stippy", Path(work))[0]}

        # separately trained concepts, each also seen beside an ordinary object named first
        hugsy, _ = train(host, "hugsy", Path(work), companions=demo.COMPANION_VIEWS)
        stippy, _ = train(host, "stippy", Path(work), companions=demo.COMPANION_VIEWS)
        host.install_word("hugsy", hugsy.embeddings)
        host.install_word("stippy", stippy.embeddings)
        layouts = tuple(("left", "right", background) for background in world.BACKGROUNDS for _ in range(2))
        prompts = demo.pair_prompts(demo.PAIR_WORDS, PLACE_FIRST, layouts)
        with patch_unet(host.unet, [ConceptUse(hugsy), ConceptUse(stippy)]):
            pair = host.sample(prompts, list(range(len(prompts))))
        print(save_jpg(pair, len(pair), args.out / "two-concepts-one-image.jpg"))

        for word, concept in alone.items():
            host.install_word(word, concept.embeddings)
        painted = [ConceptUse(alone["hugsy"], region="left"), ConceptUse(alone["stippy"], region="right")]
        with patch_unet(host.unet, painted) as handle:
            handle.set_noise_schedule(host.scheduler.alphas_cumprod)
            pair = host.sample(prompts, list(range(len(prompts))))
        print(save_jpg(pair, len(pair), args.out / "paint-two-concepts.jpg"))


if __name__ == "__main__":
    main()
