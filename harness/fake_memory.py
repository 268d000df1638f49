"""Memory of a computation on fake tensors: the bytes of every storage alive, op by op (torch only, so that a host's
own interpreter can run it)."""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages that ops create, while they are alive; `peak` is the most at once. The tensors of
    `counted_apart` (the weights) are not counted: a view of one (a transposed weight) is no new storage."""

    def __init__(self, *counted_apart: torch.nn.Module) -> None:
        super().__init__()
        self.live: dict[int, int] = {t.untyped_storage()._cdata: 0 for m in counted_apart
                                     for t in [*m.parameters(), *m.buffers()]}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t.untyped_storage())
        return out

    def _track(self, storage) -> None:
        key = storage._cdata
        if key not in self.live:
            self.live[key] = storage.nbytes()
            self.current += self.live[key]
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key)


def weight_bytes(*modules: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])
