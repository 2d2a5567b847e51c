"""Decode-time speed-ups for fp32 models on small CPUs.

At batch 1 every linear layer is a matrix-vector product bound by memory bandwidth. On these
machines torch's fp32 GEMV (MKL) reads weights at about 11.6 GB/s while OpenBLAS through
numpy reads at about 26 GB/s, so single-row inputs take the numpy route. The weights are
shared, not copied: ``GemvLinear`` *is* an ``nn.Linear`` (same parameters, same state dict),
so compression, PEFT and checkpoints see nothing different.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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


# numpy's BLAS threads and the colocated-node policy need no torch: they live in threads.py
from edgeweave.runtime.threads import (  # noqa: E402, F401
    ColocatedThreads,
    blas_threads,
    set_blas_threads,
)
