"""The uncentered second moment `C = E[e eᵀ]` of context vectors, streamed, inverted and cached on disk."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from .errors import PerfusionError
from .files import save_tensors

Progress = Callable[[int, int], None]
"""`progress(done, total)`, called as work advances."""

RIDGE = 1e-5  # relative to the mean eigenvalue; keeps C⁻¹ finite for directions no caption uses


class SecondMoment:
    """A running `E[e eᵀ]` over every token position of every batch, in float64, summed on the device the contexts
    come from (the CPU would keep a GPU waiting for minutes), or the CPU where that has no float64 (MPS)."""

    def __init__(self, dim: int, total: Tensor | None = None, count: int = 0) -> None:
        self.dim = dim
        self.total = torch.zeros(dim, dim, dtype=torch.float64) if total is None else total.double()
        self.count = count

    def update(self, contexts: Tensor) -> None:
        """Add a batch of context vectors of shape `(..., dim)`."""
        if contexts.shape[-1] != self.dim:
            raise PerfusionError(f"context width {contexts.shape[-1]} does not match the second moment's {self.dim}")
        device = contexts.device if contexts.device.type not in ("mps", "meta") else torch.device("cpu")
        flat = contexts.detach().reshape(-1, self.dim).to(device, torch.float64)
        if not torch.isfinite(flat).all():
            raise PerfusionError("the text encoder produced NaN or inf: check the model (fp16 overflow?)")
        self.total = self.total.to(device)
        self.total += flat.T @ flat
        self.count += flat.shape[0]

    @property
    def matrix(self) -> Tensor:
        if self.count == 0:
            raise PerfusionError("second moment of zero vectors: give at least one caption")
        return self.total.cpu() / self.count

    def inverse(self, ridge: float = RIDGE) -> Tensor:
        """`(C + λ I)⁻¹` in float64, with λ = `ridge` × the mean eigenvalue of C."""
        c = self.matrix
        lam = ridge * torch.trace(c) / self.dim
        return torch.linalg.inv(c + lam * torch.eye(self.dim, dtype=torch.float64))

    @property
    def fingerprint(self) -> str:
        """A short hash of C (rounded to float32, so it survives float64 round-off)."""
        return hashlib.sha256(self.matrix.float().numpy().tobytes()).hexdigest()[:16]


def second_moment(
    encode: Callable[[list[str]], Tensor],
    captions: Sequence[str],
    batch_size: int = 64,
    progress: Progress | None = None,
) -> SecondMoment:
    """Stream `C` over `captions`, encoding `batch_size` at a time with `encode(prompts) -> (B, T, d)`."""
    if not captions:
        raise PerfusionError("no captions to compute the second moment from: give a caption file")
    moment: SecondMoment | None = None
    for start in range(0, len(captions), batch_size):
        with torch.no_grad():
            contexts = encode(list(captions[start : start + batch_size]))
        moment = moment or SecondMoment(contexts.shape[-1])
        moment.update(contexts)
        if progress:
            progress(min(start + batch_size, len(captions)), len(captions))
    return moment


def weights_key(modules: Iterable[nn.Module], layer: str, captions: Sequence[str]) -> str:
    """A cache key for `C`: the text encoders' weights, the layer the UNet reads, and the captions."""
    h = hashlib.sha256(f"layer={layer}|captions={len(captions)}".encode())
    h.update(hashlib.sha256("\n".join(captions).encode()).digest())
    for module in modules:
        for name, t in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-d too
    return h.hexdigest()[:32]


def default_cache_dir() -> Path:
    """`$PERFUSION_CACHE`, else `~/.cache/perfusion`."""
    return Path(os.environ.get("PERFUSION_CACHE") or Path.home() / ".cache" / "perfusion")


def cached_second_moment(
    key: str, compute: Callable[[], SecondMoment], cache_dir: str | os.PathLike | None = None
) -> SecondMoment:
    """Load `C` for `key` from the cache, or compute it once and store it atomically."""
    path = Path(cache_dir or default_cache_dir()) / f"second_moment-{key}.safetensors"
    if path.is_file():
        try:
            stored = load_file(path)
            return SecondMoment(stored["total"].shape[0], stored["total"], int(stored["count"].item()))
        except Exception:  # a damaged cache entry is recomputed, never trusted
            path.unlink(missing_ok=True)
    moment = compute()
    save_tensors(path, {"total": moment.total, "count": torch.tensor(moment.count)}, {"key": key})
    return moment


def host_second_moment(
    encode: Callable[[list[str]], Tensor],
    text_encoders: Iterable[nn.Module],
    layer: str,
    captions: Sequence[str],
    progress: Progress | None = None,
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
) -> SecondMoment:
    """`C` of a host: its `encode` (prompts to the contexts the UNet reads, from `text_encoders` at `layer`) over
    `captions`, cached under the encoders' weights, the layer and the captions. Every host gets its `C` here."""
    key = weights_key(text_encoders, layer, captions)
    return cached_second_moment(key, lambda: second_moment(encode, captions, batch_size, progress), cache_dir)
