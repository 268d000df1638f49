"""Paint with concepts: a region per concept, applied inside cross-attention in one sampling pass.

Each concept with a region mask `m_c` (1 where it may appear) is kept out of the rest of the image: the attention
score of image position `x` and text token `j` gets the bias

    −w_c · log(1 + σ) · max(scores) · (1 − m_c(x)) · g_c(e_j)

where `g_c(e_j)` is the concept's gate on token `j` (the same gate that decides how much of its edit the
token receives, so the bias lands on the concept's word however the host tokenised the prompt), `σ` the
noise level of the step (capped at SIGMA_CAP: zero-terminal-SNR schedules start at infinity) and
`max(scores)` the largest score of the layer's call, per image and head. This is eDiffi's "paint with words"
scale (Balaji et al. 2022) with the bias moved from inside the region to outside it: inside, the concept's
attention is the model's own, so a region never draws more attention to a concept than it was trained with
(eDiffi's positive bias, over regions that cover the image, pulls every position's attention onto the concept
words and loses backgrounds and looks). Masks are resized to each layer's grid. Inside every region the bias is
exactly zero, and a patch without regions never calls this module.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import PerfusionError
from .rank1 import JointProjector

SIGMA_CAP = 14.6  # Stable Diffusion's largest σ


NAMED = ("left", "right", "top", "bottom", "centre", "top-left", "top-right", "bottom-left", "bottom-right")
_NAMED_SIZE = 64  # named regions are drawn at this size; any grid reads them exactly, being halves and quarters


def named_region(name: str) -> Tensor:
    """A region by name (`NAMED`): an image half, the centre (the middle half across and down), or a quarter."""
    if name not in NAMED:
        raise PerfusionError(f"unknown region {name!r}: use one of {', '.join(NAMED)}, or give a mask")
    spans = {"top": (0.0, 0.5), "bottom": (0.5, 1.0), "left": (0.0, 0.5), "right": (0.5, 1.0),
             "centre": (0.25, 0.75)}
    rows = columns = (0.0, 1.0)
    for part in name.split("-"):
        if part in ("top", "bottom"):
            rows = spans[part]
        elif part in ("left", "right"):
            columns = spans[part]
        else:
            rows = columns = spans[part]
    n = _NAMED_SIZE
    mask = torch.zeros(n, n)
    mask[int(rows[0] * n):int(rows[1] * n), int(columns[0] * n):int(columns[1] * n)] = 1
    return mask


def as_region(mask: Tensor | str, name: str) -> Tensor:
    """A region as float32 `(H, W)` in [0, 1]: a mask (a batch of one `(1, H, W)` is accepted) or a `NAMED` one."""
    if isinstance(mask, str):
        return named_region(mask)
    mask = torch.as_tensor(mask)
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 2 or 0 in mask.shape:
        raise PerfusionError(f"the region of concept '{name}' must be one (height, width) mask, "
                             f"got shape {tuple(mask.shape)}")
    mask = mask.detach().float()
    if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise PerfusionError(f"the region of concept '{name}' must hold values in [0, 1] (1: the concept goes there)")
    return mask.cpu()


def grid_for(queries: int, height: int, width: int) -> tuple[int, int]:
    """The (rows, columns) of a UNet level with `queries` image positions, for a `height` x `width` input: each
    level halves the sides, rounding up."""
    rows, columns = height, width
    while rows * columns > queries and (rows > 1 or columns > 1):
        rows, columns = -(-rows // 2), -(-columns // 2)
    if rows * columns != queries:
        raise PerfusionError(f"cannot place {queries} attention positions on a {height}x{width} input: "
                             "regions need the UNet's own input size")
    return rows, columns


def resize(mask: Tensor, grid: tuple[int, int]) -> Tensor:
    """`mask` (H, W) averaged over each cell of `grid` (a position outside the region stays exactly 0), flattened
    to rows x columns positions."""
    return F.interpolate(mask[None, None], size=grid, mode="area").clamp(0, 1).flatten()


def noise_scale(sigma: Tensor) -> Tensor:
    """eDiffi's `log(1 + σ)`, with σ capped at SIGMA_CAP."""
    return torch.log1p(sigma.float().clamp(min=0, max=SIGMA_CAP))


def painted_scores(q: Tensor, k: Tensor, paint: Tensor, sigma: Tensor) -> Tensor:
    """The biased attention scores `s + log(1 + σ) · max(s) · paint`, `s = q kᵀ / √d`, float32, for q (batch, heads,
    queries, d), k (batch, heads, tokens, d), `paint` (batch, queries, tokens; ≤ 0 where a concept is kept out) and
    noise levels `sigma` (batch,); `max(s)` per image and head. Explicit, as the scale needs the scores' max; biased
    in place."""
    scores = q.float() @ k.float().transpose(-1, -2)
    scores.mul_(1 / math.sqrt(q.shape[-1]))
    scale = scores.detach().amax(dim=(-2, -1), keepdim=True).clamp_(min=0)
    scale.mul_(noise_scale(sigma).to(scores.device).view(-1, 1, 1, 1))
    return scores.addcmul_(scale, paint.to(scores.device)[:, None])


def painted_attention(q: Tensor, k: Tensor, v: Tensor, heads: int, paint: Tensor, sigma: Tensor) -> Tensor:
    """`softmax(painted_scores) v` for q (batch, queries, heads·d) and k, v (batch, tokens, heads·d)."""
    batch, queries, inner = q.shape
    q, k, v = (t.reshape(batch, -1, heads, inner // heads).transpose(1, 2) for t in (q, k, v))
    weights = painted_scores(q, k, paint, sigma).softmax(-1)
    return (weights.to(v.dtype) @ v).transpose(1, 2).reshape(batch, queries, inner)


class RegionPainter:
    """The regions of the concepts of one patch: `paint` gives the bias pattern of a call, `attention` the call."""

    def __init__(self, projector: JointProjector, regions: Sequence[Tensor | None], weights: Sequence[float]) -> None:
        """`regions`: a mask from `as_region` (or None) per concept of `projector`, and a weight per concept."""
        if len(regions) != len(projector) or len(weights) != len(projector):
            raise PerfusionError(f"need a region (or None) and a weight per concept ({len(projector)})")
        self.projector = projector
        self.index = [j for j, r in enumerate(regions) if r is not None]
        self.masks = [regions[j] for j in self.index]
        self.weights = torch.tensor([float(weights[j]) for j in self.index])
        self._kept_out: dict[tuple[int, int], Tensor] = {}
        self._context: Tensor | None = None  # the last context painted, and its paint per grid
        self._painted: dict[tuple[int, int], Tensor] = {}

    def __bool__(self) -> bool:
        return bool(self.index)

    def kept_out(self, grid: tuple[int, int]) -> Tensor:
        """Where each concept is kept out on `grid` (1 − its region), times minus its weight: (positions, regions)."""
        if grid not in self._kept_out:
            self._kept_out[grid] = (torch.stack([resize(m, grid) for m in self.masks], dim=1) - 1) * self.weights
        return self._kept_out[grid]

    def paint(self, context: Tensor, grid: tuple[int, int]) -> Tensor:
        """`−Σ_c w_c (1 − m_c(x)) g_c(e_j)`: (batch, positions, tokens) for `context` (batch, tokens, width). Every
        layer of a UNet call reads the same context, so the paints of the last one are kept, per grid."""
        if context is not self._context:
            self._context, self._painted = context, {}
        if grid not in self._painted:
            gates = self.projector.gates(context)[..., self.index]
            self._painted[grid] = torch.einsum("qn,bkn->bqk", self.kept_out(grid).to(gates.device), gates)
        return self._painted[grid]

    def attention(self, q: Tensor, k: Tensor, v: Tensor, heads: int, context: Tensor, input_size: tuple[int, int],
                  sigma: Tensor) -> Tensor:
        """One cross-attention call with the regions' bias, for a UNet input of `input_size` (rows, columns)."""
        grid = grid_for(q.shape[1], *input_size)
        return painted_attention(q, k, v, heads, self.paint(context, grid), sigma.expand(q.shape[0]))


_ATTN2 = re.compile(r"^(?:(input|output)_blocks\.(\d+)\.\d+|middle_block\.\d+)\.transformer_blocks\.(\d+)\.attn2$")


def attn2_block(layer_name: str) -> tuple[str, int, int]:
    """ComfyUI's attn2 replace key (block, number, transformer index) of a canonical layer name."""
    found = _ATTN2.match(layer_name)
    if found is None:
        raise PerfusionError(f"cannot place regions on layer {layer_name}: not a UNet transformer block")
    block, number, index = found.groups()
    return (block, int(number), int(index)) if block else ("middle", 0, int(index))


def _painted_attention(painter: RegionPainter, seen: dict) -> Callable:
    def attn2_replace(q: Tensor, k: Tensor, v: Tensor, extra_options: dict) -> Tensor:
        size = tuple(extra_options["original_shape"][-2:])
        return painter.attention(q, k, v, extra_options["n_heads"], seen.pop("context"), size,
                                 extra_options["sigmas"])

    attn2_replace.perfusion = True
    return attn2_replace


def set_attn2_region(model_options: dict, layer_name: str, painter: RegionPainter | None, seen: dict) -> None:
    """Put (or take away) the layer's painted attention among the attn2 replace patches of a ComfyUI-style patcher's
    `model_options` (ComfyUI, Forge, reForge); `seen["context"]` is the prompt the layer's V copy last projected."""
    key = attn2_block(layer_name)
    replaces = model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    ours = getattr(replaces.get(key), "perfusion", False)
    if painter is None:
        if ours:
            del replaces[key]
        return
    if key in replaces and not ours:
        raise PerfusionError(f"another node (an IPAdapter or attention node) replaces the cross-attention of "
                             f"{layer_name}, which regions compute themselves: leave the concept's region out, or "
                             "remove that node")
    options = model_options.setdefault("transformer_options", {})
    options.setdefault("patches_replace", {}).setdefault("attn2", {})[key] = _painted_attention(painter, seen)
