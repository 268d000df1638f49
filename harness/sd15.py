"""One random-weight SD1.5-shaped checkpoint that ComfyUI, AUTOMATIC1111 and the command line all load.

A1111's interpreter builds it (`a1111_model.py`, context 768: a small UNet of 320 channels that ComfyUI detects as
SD1.5, full-size CLIP-L and VAE, and the `.yaml` A1111 needs beside it); diffusers' single-file loader converts the
same weights into a diffusers folder for the command line. Both are built once into `$PERFUSION_TEST_CACHE/sd15`.
Offline, the conversion reads CLIP-L's tokenizer and text config from the Hugging Face cache A1111 uses (`HF_HOME`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .a1111_server import build_model
from .comfy.server import cache_dir

NAME = "sd15-shared"
SIZE = 64  # pixels: what every host renders and trains at in the tests


def shared_model(a1111: tuple[str, str]) -> tuple[Path, Path]:
    """The checkpoint (with its `.yaml` beside it) and the diffusers folder of the same weights, built with the
    A1111 of `a1111` (folder, interpreter) on first use."""
    folder = cache_dir() / "sd15"
    if not folder.is_dir():
        partial = folder.with_suffix(".partial")
        shutil.rmtree(partial, ignore_errors=True)
        checkpoint = build_model(a1111, partial, NAME, 768, 0)
        _convert(checkpoint, partial / "diffusers")
        partial.rename(folder)
    return folder / f"{NAME}.safetensors", folder / "diffusers"


def _convert(checkpoint: Path, out: Path) -> None:
    """`checkpoint` as a diffusers folder (no safety checker); its UNet's default size is `SIZE`, so that the
    command line trains at the size the other hosts do."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    pipe = StableDiffusionPipeline.from_single_file(
        str(checkpoint), original_config=str(checkpoint.with_suffix(".yaml")), local_files_only=True,
        tokenizer=CLIPTokenizer.from_pretrained("openai/clip-vit-large-patch14", local_files_only=True),
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    pipe.unet.register_to_config(sample_size=SIZE // pipe.vae_scale_factor)
    pipe.save_pretrained(out)
