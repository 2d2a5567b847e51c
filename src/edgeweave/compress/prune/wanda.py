"""Wanda (Sun et al., 2023): score ``|W_ij| * ||X_j||``, prune the lowest per output row.

No weight update, one calibration pass; the input norms come from the sequential pass, so
block ``i`` is scored on the outputs of the already-pruned blocks before it.
"""

from __future__ import annotations

from typing import Any

from edgeweave.compress.calib import LinearStats, sequential
from edgeweave.compress.prune.masks import check_pattern, prune_mask
from edgeweave.compress.recipes import Wanda, register_method
from edgeweave.models.llama import BlockModel


@register_method(Wanda)
def apply_wanda(r: Wanda, model: BlockModel, ctx: Any, note: dict[str, Any]) -> BlockModel:
    ids = ctx.require_calib("wanda")

    def process(i: int, block: Any, stats: dict[str, LinearStats]) -> None:
        for name, st in stats.items():
            m = block.get_submodule(name)
            check_pattern(m.in_features, r.pattern, name)
            scores = m.weight.abs() * st.col_norm[None, :]
            m.weight.masked_fill_(prune_mask(scores, r.sparsity, r.pattern, per_row=True), 0.0)

    sequential(model, ids, process)
    note["calibration_tokens"] = int(ids.numel())
    return model
