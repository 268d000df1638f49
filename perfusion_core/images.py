"""Small image helpers in plain torch: grids, a loss-curve plot, and image/folder I/O (PIL, imported lazily)."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import TrainingError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def image_grid(images: Tensor, columns: int, pad: int = 2, fill: float = 1.0) -> Tensor:
    """Tile `(N, 3, H, W)` images into one `(3, H', W')` image, `columns` per row."""
    n, c, h, w = images.shape
    rows = -(-n // columns)
    grid = torch.full((c, rows * (h + pad) + pad, columns * (w + pad) + pad), fill, dtype=images.dtype)
    for k, image in enumerate(images):
        row, column = divmod(k, columns)
        top, left = pad + row * (h + pad), pad + column * (w + pad)
        grid[:, top : top + h, left : left + w] = image
    return grid


def loss_curve(losses: list[float], width: int = 480, height: int = 240, smooth: int = 10) -> Tensor:
    """A `(3, height, width)` plot of the loss (light) and its running mean (dark), on a log-free linear axis."""
    image = torch.ones(3, height, width)
    margin = 8
    image[:, margin : height - margin, margin] = 0.6  # y axis
    image[:, height - margin, margin : width - margin] = 0.6  # x axis
    if len(losses) < 2:
        return image
    values = torch.tensor(losses, dtype=torch.float32)
    kernel = min(smooth, len(values))
    mean = torch.nn.functional.avg_pool1d(values[None, None], kernel, stride=1).flatten()
    lo, hi = float(values.min()), float(values.max())
    span = hi - lo or 1.0
    for series, colour, offset in ((values, (0.65, 0.75, 0.95), 0), (mean, (0.1, 0.25, 0.7), kernel - 1)):
        steps = torch.arange(len(series), dtype=torch.float32) + offset
        xs = margin + 1 + steps / (len(values) - 1) * (width - 2 * margin - 2)
        ys = height - margin - 1 - (series - lo) / span * (height - 2 * margin - 2)
        # draw each segment densely enough to look continuous
        t = torch.linspace(0, 1, 8)
        px = (xs[:-1, None] + (xs[1:] - xs[:-1])[:, None] * t).flatten().round().long()
        py = (ys[:-1, None] + (ys[1:] - ys[:-1])[:, None] * t).flatten().round().long()
        for ch, value in enumerate(colour):
            image[ch, py.clamp(0, height - 1), px.clamp(0, width - 1)] = value
    return image


def to_pil(image: Tensor):
    """A `(3, H, W)` image in [0, 1] as a PIL image."""
    from PIL import Image

    return Image.fromarray((image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy())


def save_image(image: Tensor, path: str | os.PathLike, scale: int = 1) -> Path:
    """Save a `(3, H, W)` image in [0, 1], enlarged `scale`× with nearest-neighbour (tiny images stay sharp);
    the suffix picks the format (.png, .jpg, ...)."""
    enlarged = image.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    to_pil(enlarged).save(path, quality=92)  # JPEG's quality; PNG ignores it
    return Path(path)


def preview_grid(images: Tensor) -> Tensor:
    """`(N, 3, H, W)` preview images as one grid, up to 4 a row."""
    return image_grid(images.float().clamp(0, 1), columns=min(4, images.shape[0]))


def data_url(image: Tensor, max_side: int = 256) -> str:
    """A `(3, H, W)` image in [0, 1] as a data URL: PNG when it fits in `max_side` pixels a side, else scaled
    down to fit, as JPEG (a concept file's thumbnail stays a few KB)."""
    from PIL import Image

    pil, buffer, kind = to_pil(image), io.BytesIO(), "png"
    if max(pil.size) > max_side:
        pil.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        kind = "jpeg"
    pil.save(buffer, format=kind.upper(), quality=85)  # PNG ignores the quality
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode()


def image_files(folder: Path) -> list[Path]:
    """The training images of `folder`, sorted (previews written beside them left out)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and ".preview" not in p.name)


def load_image_folder(folder: str | os.PathLike, resolution: int) -> tuple[Tensor, Tensor | None]:
    """Images of a folder as `(N, 3, R, R)` in [0, 1], and masks `(N, R, R)` from alpha channels (or None).

    Policy for mixed sizes: each image is scaled so its shorter side is `resolution`, then centre-cropped
    to a square. An image without alpha gets a full mask when others have one.
    """
    from PIL import Image, ImageOps

    folder = Path(folder)
    if not folder.is_dir():
        raise TrainingError(f"image folder {folder} does not exist: give a folder of training images")
    files = image_files(folder)
    if not files:
        raise TrainingError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}: add 3-8 photos of the concept")
    images, masks, any_alpha = [], [], False
    for path in files:
        try:
            with Image.open(path) as opened:
                image = ImageOps.exif_transpose(opened).convert("RGBA")
                any_alpha |= opened.mode in ("RGBA", "LA") or "transparency" in opened.info
        except OSError as exc:
            raise TrainingError(f"cannot read image {path.name} ({exc}): remove or replace it") from None
        image = ImageOps.fit(image, (resolution, resolution), Image.Resampling.BICUBIC)
        array = torch.from_numpy(np.asarray(image).copy()).float() / 255
        images.append(array[..., :3].permute(2, 0, 1))
        masks.append(array[..., 3])
    return torch.stack(images), torch.stack(masks) if any_alpha else None
