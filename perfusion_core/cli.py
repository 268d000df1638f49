"""`python -m perfusion_core`: inspect, convert and train concepts from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import PerfusionError
from .files import convert_pickled, load_concept, read_safetensors
from .train_cli import add_arguments, run


def _info(args: argparse.Namespace) -> None:
    concept = load_concept(args.file)
    stored, _ = read_safetensors(args.file)
    t = concept.training
    title = concept.title if concept.title != concept.word else ""
    print(f"{concept.word}  (superclass: {concept.superclass})  {title}")
    print(f"  base: {concept.family}, context width {concept.context_dim}, "
          f"text-encoder layer {concept.text_encoder_layer}")
    print(f"  trained: {t.get('steps', '?')} steps on {t.get('images', '?')} images, beta {t.get('beta', '?')}, "
          f"tau {t.get('tau', '?')}, seed {t.get('seed', '?')}; created {concept.created_at or '?'}")
    print(f"  file: {Path(args.file).stat().st_size / 1024:.1f} KB, C fingerprint {concept.c_fingerprint or '-'}, "
          f"{len(concept.embeddings)} word embedding(s), preview image: {'yes' if concept.thumbnail else 'no'}")
    if concept.description:
        print(f"  {concept.description}")
    width = max(len(name) for name in concept.o_v)
    print(f"\n  {'layer':<{width}}  {'width':>5}  dtype    |o*_V|")
    for name, target in concept.o_v.items():
        dtype = str(stored[f"{name}.o_v"].dtype).removeprefix("torch.")
        print(f"  {name:<{width}}  {target.shape[0]:>5}  {dtype:<7}  {target.norm():.3f}")


def _convert(args: argparse.Namespace) -> None:
    concept = convert_pickled(args.source, args.target)
    print(f"wrote {args.target} ({concept.word}, {concept.family})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m perfusion_core", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="print a concept file's metadata and layer table")
    info.add_argument("file", help="a concept .safetensors file")
    info.set_defaults(func=_info)
    convert = commands.add_parser(
        "convert", help="convert a concept saved with torch.save (.pt) to .safetensors, reading it weights-only"
    )
    convert.add_argument("source")
    convert.add_argument("target")
    convert.set_defaults(func=_convert)
    train = commands.add_parser("train", help="train a concept on a diffusers-format model folder")
    add_arguments(train)
    train.set_defaults(func=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except PerfusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
