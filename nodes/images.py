"""Load Perfusion Training Images: a folder of ComfyUI's input directory as one batch of square images."""

from __future__ import annotations

from pathlib import Path

import folder_paths
import torch
from comfy_api.v0_0_2 import io

from ..perfusion_core.images import image_files, load_image_folder
from .train import to_comfy


def _input_directory() -> Path:
    return Path(folder_paths.get_input_directory())


def image_folders() -> list[str]:
    """Folders under ComfyUI's input directory that hold images, as paths relative to it ('/'-separated)."""
    root = _input_directory()
    if not root.is_dir():
        return []
    return sorted(folder.relative_to(root).as_posix() for folder in root.rglob("*")
                  if folder.is_dir() and image_files(folder))


class LoadPerfusionTrainingImages(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PerfusionTrainingImages",
            display_name="Load Perfusion Training Images",
            category="perfusion",
            description="Loads every image of a folder in ComfyUI's input directory as one batch for Train Perfusion: "
                        "each scaled so its shorter side is the resolution, then centre-cropped to a square (photos "
                        "of any size and shape). Transparent pixels become the mask's 0.",
            inputs=[
                io.Combo.Input("folder", options=image_folders(),
                               tooltip="A folder under ComfyUI's input directory with 3–8 photos of the concept "
                                       "(.png, .jpg, .webp, .bmp). Press R to refresh the list."),
                io.Int.Input("resolution", default=512, min=64, max=2048, step=64,
                             tooltip="Side of the square training images: 512 for SD1.x, 768 for SD2, 1024 for "
                                     "SDXL."),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="The photos, one batch, for Train Perfusion."),
                io.Mask.Output(display_name="mask", tooltip="Where the concept is: the photos' alpha, or all 1 "
                                                            "where none has transparency. Optional for training."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, folder: str, resolution: int) -> str:
        try:
            files = sorted((p.name, p.stat().st_mtime) for p in (_input_directory() / folder).iterdir())
        except OSError:  # fails in execute, with the message
            return "missing"
        return f"{files}/{resolution}"

    @classmethod
    def execute(cls, folder: str, resolution: int) -> io.NodeOutput:
        # ComfyUI's own check keeps `folder` to the listed ones
        images, masks = load_image_folder(_input_directory() / folder, resolution)
        mask = masks if masks is not None else torch.ones(images.shape[0], resolution, resolution)
        return io.NodeOutput(to_comfy(images), mask)
