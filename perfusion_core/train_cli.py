"""`python -m perfusion_core train`: train a concept on a diffusers-format model folder."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .captions import load_captions
from .errors import TrainingError
from .images import image_grid, load_image_folder, loss_curve, save_image
from .knobs import RECIPE
from .memory import CHECKPOINTING
from .patch import LOCKS
from .precision import PRECISIONS
from .train import StepInfo, Trainer, TrainingData, TrainSettings, state_path_for

EXAMPLE = """example:
  python -m perfusion_core train --model toyworld/model --images my_teddy/ --superclass teddy \\
      --token hugsy --out hugsy.safetensors
  python -m perfusion_core train ... --steps 800 --resume hugsy.safetensors   # continue to step 800

Images of any size are scaled (shorter side to the model's resolution) and centre-cropped; an alpha
channel becomes a loss mask. Writes OUT, OUT's training state (.state.safetensors) for --resume, a
loss curve (.loss.png, .loss.json) and, with --preview-every, preview grids (.preview-STEP.png)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLE
    parser.description = "Train a Perfusion concept from a few images of it."
    need = parser.add_argument_group("what to train")
    need.add_argument("--model", required=True, help="diffusers-format model folder (SD1.x, SD2.x, SDXL, toy)")
    need.add_argument("--images", required=True, help="folder with 1-10 images of the concept")
    need.add_argument("--superclass", required=True, help="one-token word for what the concept is, e.g. teddy")
    need.add_argument("--token", required=True, help="a new word that will stand for the concept, e.g. hugsy")
    need.add_argument("--out", required=True, help="concept file to write, NAME.safetensors")
    recipe = parser.add_argument_group("recipe (defaults: the paper's; a resumed run keeps its own, but for steps, "
                                       "--save-every, --preview-every and --gradient-checkpointing)")
    for name, knob in RECIPE.items():
        recipe.add_argument(f"--{name.replace('_', '-')}", type=int if knob.integer else float, default=knob.default,
                           metavar="N" if knob.integer else "X",
                           help=f"{knob.meaning} Default {knob.default}, from {knob.low} to {knob.high}.")
    recipe.add_argument("--gradient-checkpointing", choices=list(CHECKPOINTING), default="auto",
                        help="recompute UNet activations in the backward pass: less memory, ~30%% more time "
                             "(auto: where the card's free memory needs it)")
    recipe.add_argument("--lock", choices=list(LOCKS), default="local",
                        help="how the concept is applied while training and, by default, afterwards: local (the "
                             "paper's), global (every key reads the superclass prompt) or context (keys and values "
                             "read it; composes two concepts in one prompt)")
    run = parser.add_argument_group("run")
    run.add_argument("--preview-prompt", action="append", help="preview prompt with {} for the word (repeatable)")
    run.add_argument("--resume", metavar="FILE", help="continue from a concept or .state.safetensors file")
    run.add_argument("--captions", help="caption file for the text statistics C (default: the shipped corpus)")
    run.add_argument("--caption-count", type=int, default=0,
                     help="use only the first N captions for C (0: all; C is computed once per encoder and cached)")
    run.add_argument("--device", default="auto", help="auto (CUDA when present, else the CPU), cpu, cuda:1, mps ...")
    run.add_argument("--precision", choices=["auto", *PRECISIONS], default="auto",
                     help="the UNet's compute dtype (auto: bf16 on a CUDA card that has it, else fp16 with loss "
                          "scaling; fp32 on a CPU); the trained tensors and the text encoders stay fp32")


class TerminalProgress:
    """One self-rewriting line: bar, step, loss and time left."""

    def __init__(self, stream=sys.stderr) -> None:
        self.stream = stream

    def __call__(self, info: StepInfo) -> None:
        done = int(30 * info.step / info.steps)
        eta = time.strftime("%M:%S", time.gmtime(info.eta)) if info.eta < 3600 else f"{info.eta / 3600:.1f}h"
        self.stream.write(f"\r[{'#' * done}{'.' * (30 - done)}] {info.step}/{info.steps}  loss {info.loss:.4f}  "
                          f"left {eta} ")
        if info.step == info.steps:
            self.stream.write("\n")
        self.stream.flush()


def _moment_progress(done: int, total: int) -> None:
    sys.stderr.write(f"\rtext statistics C: {done}/{total} captions")
    if done == total:
        sys.stderr.write("\n")


def run(args: argparse.Namespace) -> None:
    from .diffusers_host import DiffusersHost

    if args.resume and state_path_for(args.resume).resolve() != state_path_for(args.out).resolve():
        raise TrainingError(f"a resumed run goes on writing where it started: give --out {args.resume} (not "
                            f"{args.out}), or copy the concept and its state file to the new name and resume that")
    checkpointing = CHECKPOINTING[args.gradient_checkpointing]
    settings = None if args.resume else TrainSettings(  # checked before the model loads
        word=args.token, superclass=args.superclass, **{name: getattr(args, name) for name in RECIPE},
        gradient_checkpointing=checkpointing, lock=args.lock,
        **({"preview_prompts": tuple(args.preview_prompt)} if args.preview_prompt else {}),
    )
    captions = load_captions(args.captions)
    host = DiffusersHost(args.model, device=args.device, captions=captions[: args.caption_count or None],
                         precision=args.precision)
    images, masks = load_image_folder(args.images, host.resolution)
    data = TrainingData(images, masks)
    if settings is None:
        trainer = Trainer.resume(host, data, args.resume, steps=args.steps, save_every=args.save_every,
                                 preview_every=args.preview_every, gradient_checkpointing=checkpointing)
    else:
        trainer = Trainer(host, data, settings, Path(args.out))
    stem = trainer.concept_path.with_suffix("")

    def save_preview(step: int, previews) -> None:
        save_image(image_grid(previews, columns=len(trainer.settings.preview_seeds)), f"{stem}.preview-{step}.png")

    started = time.monotonic()
    result = trainer.run(progress=TerminalProgress(), on_preview=save_preview, moment_progress=_moment_progress)
    save_image(loss_curve(result.losses), f"{stem}.loss.png")
    Path(f"{stem}.loss.json").write_text(json.dumps(result.losses))
    size = result.concept_path.stat().st_size / 1024
    print(f"wrote {result.concept_path} ({size:.1f} KB) after {trainer.step} steps in "
          f"{time.monotonic() - started:.0f} s; final loss {result.losses[-1]:.4f}")
