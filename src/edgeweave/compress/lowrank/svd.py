"""Truncated SVD: ``W ~ B @ A`` with ``A = sqrt(S) V^T`` (rank, in), ``B = U sqrt(S)``.

Per layer, the rank is the smallest keeping ``energy`` of the squared singular values (so the
relative Frobenius error is at most ``sqrt(1 - energy)``); a layer stays dense unless the two
factors save at least ``min_saving`` of its parameters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgeweave.compress.calib import block_linears
from edgeweave.compress.modules import LowRankLinear, set_module
from edgeweave.compress.recipes import SVD, register_method
from edgeweave.models.llama import BlockModel


def rank_for_energy(s: torch.Tensor, energy: float) -> int:
    e = torch.cumsum(s.double().pow(2), 0) / s.double().pow(2).sum()
    return int(torch.searchsorted(e, torch.tensor(energy, dtype=torch.float64)).item()) + 1


def factorize(W: torch.Tensor, energy: float, min_saving: float, col_scale: torch.Tensor | None
              = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Factors (A, B) of ``W`` (or of ``W diag(col_scale)``, undone in ``A``), or None when
    low rank would not save ``min_saving`` of the parameters."""
    n, k = W.shape
    M = W.double() if col_scale is None else W.double() * col_scale.double()[None, :]
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    r = rank_for_energy(S, energy)
    if r * (n + k) > (1 - min_saving) * n * k:
        return None
    root = S[:r].sqrt()
    A = root[:, None] * Vh[:r]
    if col_scale is not None:
        A = A / col_scale.double()[None, :]
    B = U[:, :r] * root[None, :]
    return A.float(), B.float()


def replace_lowrank(model: nn.Module, name: str, m: nn.Linear, factors: Any,
                    ranks: dict[str, int]) -> None:
    if factors is None:
        ranks[name] = -1  # kept dense
        return
    A, B = factors
    set_module(model, name, LowRankLinear(A, B, None if m.bias is None else m.bias.detach()))
    ranks[name] = A.shape[0]


@register_method(SVD)
def apply_svd(r: SVD, model: BlockModel, ctx: Any, note: dict[str, Any]) -> BlockModel:
    ranks: dict[str, int] = {}
    for name, m in block_linears(model):
        replace_lowrank(model, name, m, factorize(m.weight.detach(), r.energy, r.min_saving), ranks)
    note["ranks"] = ranks
    note["layers_low_rank"] = sum(v > 0 for v in ranks.values())
    return model
