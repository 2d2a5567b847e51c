"""Decode-time speed-ups for fp32 models on small CPUs.

At batch 1 every linear layer is a matrix-vector product bound by memory bandwidth. On these
machines torch's fp32 GEMV (MKL) reads weights at about 11.6 GB/s while OpenBLAS through
numpy reads at about 26 GB/s, so single-row inputs take the numpy route. The weights are
shared, not copied: ``GemvLinear`` *is* an ``nn.Linear`` (same parameters, same state dict),
so compression, PEFT and checkpoints see nothing different.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class GemvLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (x.dtype is torch.float32 and w.dtype is torch.float32 and x.numel() == self.in_features
                and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))):
            # (1, in) @ (in, out): numpy hands the transposed view to BLAS without a copy
            y = torch.from_numpy(x.detach().reshape(1, -1).numpy() @ w.detach().numpy().T)
            if self.bias is not None:
                y += self.bias.detach()
            return y.view(*x.shape[:-1], self.out_features)
        return F.linear(x, w, self.bias)


def accelerate_decode(model: nn.Module) -> nn.Module:
    """Switch every plain fp32 ``nn.Linear`` of ``model`` to :class:`GemvLinear` in place."""
    for module in model.modules():
        if type(module) is nn.Linear and module.weight.dtype is torch.float32:
            module.__class__ = GemvLinear
    return model


def is_accelerated(model: nn.Module) -> bool:
    return any(isinstance(m, GemvLinear) for m in model.modules())


@contextlib.contextmanager
def decode_threads(active: bool = True) -> Iterator[None]:
    """Run torch single-threaded while OpenBLAS does the GEMVs.

    The two thread pools otherwise fight over the cores (idle OpenMP workers spin while the
    BLAS threads want the same CPUs): measured here, 2.6 tok/s with both pools at 2 threads
    against 23 tok/s with torch at 1. The ops left to torch at batch 1 are tiny anyway.
    """
    if not active:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def _blas() -> Any:
    """threadpoolctl's controller of numpy's BLAS (None when it cannot be found)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    libs = ThreadpoolController().select(user_api="blas")
    return libs if libs.lib_controllers else None


def blas_threads() -> int:
    """Threads numpy's BLAS (the GEMV route) runs with now; 0 when unknown."""
    libs = _blas()
    return min(c.num_threads for c in libs.lib_controllers) if libs is not None else 0


def set_blas_threads(n: int) -> None:
    """Set numpy's BLAS thread count (process-wide); a no-op when the library is unknown."""
    libs = _blas()
    if libs is not None:
        for c in libs.lib_controllers:
            c.set_num_threads(n)


class ColocatedThreads:
    """BLAS threads for a node that shares its host's cores with other nodes.

    A pipeline runs one stage at a time per stream, so with a single stream every node may
    use all cores. With several streams the nodes compute at once and all-cores-each
    oversubscribes the host (measured on 2 cores, 3 nodes, 2 threads each: 16 streams 6.3
    tok/s aggregate against 10.4 with one thread each). So: ``wide`` threads while the last
    ``window`` forward requests came from one session, one thread as soon as they do not.
    Counting requests instead of seconds keeps it right at any token rate.
    """

    def __init__(self, wide: int, window: int = 4) -> None:
        self.wide, self.window = max(1, wide), window
        self._recent: list[str] = []
        self._now = blas_threads()

    @property
    def current(self) -> int:
        return self._now

    def observe(self, session: str) -> int:
        """Record a forward of ``session``; returns (and sets) the thread count for it."""
        self._recent.append(session)
        del self._recent[:-self.window]
        want = self.wide if len(set(self._recent)) == 1 else 1
        if want != self._now:
            set_blas_threads(want)
            self._now = want
        return want
