"""Magnitude pruning: remove the smallest |w| of each linear (one threshold per matrix)."""

from __future__ import annotations

from typing import Any

from edgeweave.compress.calib import block_linears
from edgeweave.compress.prune.masks import check_pattern, prune_mask
from edgeweave.compress.recipes import Magnitude, register_method
from edgeweave.models.llama import BlockModel


@register_method(Magnitude)
def apply_magnitude(r: Magnitude, model: BlockModel, ctx: Any, note: dict[str, Any]) -> BlockModel:
    for name, m in block_linears(model):
        check_pattern(m.in_features, r.pattern, name)
        mask = prune_mask(m.weight.abs(), r.sparsity, r.pattern, per_row=False)
        m.weight.masked_fill_(mask, 0.0)
    note["scope"] = "all block linears; embeddings, norms and head kept dense"
    return model
