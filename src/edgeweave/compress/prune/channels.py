"""Structured MLP channel pruning: the matrices really shrink.

Channel ``j`` of a block's MLP is scored by ``||W_down[:, j]|| * RMS(x_j)`` where ``x_j`` is
the calibration activation entering ``down_proj`` (Wanda's score summed over a channel). The
lowest ``ratio`` are removed from ``gate_proj``/``up_proj`` (rows) and ``down_proj`` (columns);
the kept count is rounded to ``multiple`` so int4 groups still divide the width.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgeweave.compress.calib import LinearStats, sequential
from edgeweave.compress.recipes import ChannelPrune, register_method
from edgeweave.models.llama import BlockModel


def _take(m: nn.Linear, idx: torch.Tensor, dim: int) -> nn.Linear:
    w = m.weight.detach().index_select(dim, idx)
    out = nn.Linear(w.shape[1], w.shape[0], bias=m.bias is not None)
    out.weight = nn.Parameter(w.clone(), requires_grad=False)
    if m.bias is not None:
        b = m.bias.detach() if dim == 1 else m.bias.detach()[idx]
        out.bias = nn.Parameter(b.clone(), requires_grad=False)
    return out


@register_method(ChannelPrune)
def apply_channels(r: ChannelPrune, model: BlockModel, ctx: Any, note: dict[str, Any]
                   ) -> BlockModel:
    ids = ctx.require_calib("channels")
    kept: dict[int, int] = {}

    def process(i: int, block: Any, stats: dict[str, LinearStats]) -> None:
        mlp = block.mlp
        width = mlp.down_proj.in_features
        keep = max(r.multiple, round(width * (1 - r.ratio) / r.multiple) * r.multiple)
        keep = min(keep, width)
        score = mlp.down_proj.weight.norm(dim=0) * stats["mlp.down_proj"].col_norm
        idx = torch.sort(torch.topk(score, keep).indices).values
        mlp.gate_proj = _take(mlp.gate_proj, idx, 0)
        mlp.up_proj = _take(mlp.up_proj, idx, 0)
        mlp.down_proj = _take(mlp.down_proj, idx, 1)
        kept[i] = keep

    sequential(model, ids, process, names=("mlp.down_proj",))
    note["mlp_channels_kept"] = kept
    return model
