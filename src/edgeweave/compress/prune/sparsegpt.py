"""SparseGPT (Frantar & Alistarh, 2023): choose the mask per block of 128 columns by the OBS
saliency ``w^2 / [H^-1]_jj^2`` and compensate every removed weight by updating the columns
not yet processed, as GPTQ does for rounding errors."""

from __future__ import annotations

from typing import Any

import torch

from edgeweave.compress.calib import LinearStats, sequential
from edgeweave.compress.prune.masks import check_pattern
from edgeweave.compress.quantize.gptq import inverse_hessian_chol
from edgeweave.compress.recipes import SparseGPT, register_method
from edgeweave.models.llama import BlockModel


def sparsegpt_prune(W: torch.Tensor, H: torch.Tensor, sparsity: float, pattern: str,
                    damp: float = 0.01, block: int = 128) -> torch.Tensor:
    W = W.float().clone()
    n, k = W.shape
    U = inverse_hessian_chol(H, W, damp)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        E1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        d = torch.diagonal(U1)
        if pattern == "unstructured":
            score = W1.pow(2) / d[None, :].pow(2)
            drop = int(score.numel() * sparsity)
            thresh = torch.sort(score.reshape(-1)).values[drop - 1] if drop else -1.0
            mask = score <= thresh
        else:
            mask = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            if pattern == "2:4" and i % 4 == 0:
                score = W1[:, i:i + 4].pow(2) / d[i:i + 4][None, :].pow(2)
                idx = torch.topk(score, 2, dim=1, largest=False).indices
                mask[:, i:i + 4].scatter_(1, idx, True)
            w = W1[:, i]
            q = w.masked_fill(mask[:, i], 0.0)
            Q1[:, i] = q
            err = (w - q) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            E1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return W


@register_method(SparseGPT)
def apply_sparsegpt(r: SparseGPT, model: BlockModel, ctx: Any, note: dict[str, Any]) -> BlockModel:
    ids = ctx.require_calib("sparsegpt")

    def process(i: int, block: Any, stats: dict[str, LinearStats]) -> None:
        for name, st in stats.items():
            m = block.get_submodule(name)
            check_pattern(m.in_features, r.pattern, name)
            m.weight.copy_(sparsegpt_prune(m.weight, st.hessian, r.sparsity, r.pattern, r.damp))

    sequential(model, ids, process)
    note["calibration_tokens"] = int(ids.numel())
    return model
