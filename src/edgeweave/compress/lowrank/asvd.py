"""Activation-aware SVD (ASVD, Yuan et al., 2023).

Input channels that carry large activations matter more to the layer's output, so we factor
``W diag(s)`` with ``s_j = RMS(x_j)^alpha`` from calibration data and fold ``diag(s)^-1`` back
into ``A``. The energy budget then approximately bounds the *output* error instead of the
weight error. The pass is sequential, so block ``i`` is calibrated on compressed inputs.
"""

from __future__ import annotations

from typing import Any

from edgeweave.compress.calib import LinearStats, sequential
from edgeweave.compress.lowrank.svd import factorize, replace_lowrank
from edgeweave.compress.recipes import ASVD, register_method
from edgeweave.models.llama import BlockModel


@register_method(ASVD)
def apply_asvd(r: ASVD, model: BlockModel, ctx: Any, note: dict[str, Any]) -> BlockModel:
    ids = ctx.require_calib("asvd")
    ranks: dict[str, int] = {}

    def process(i: int, block: Any, stats: dict[str, LinearStats]) -> None:
        for name, st in stats.items():
            m = block.get_submodule(name)
            scale = st.col_norm.clamp(min=1e-6).pow(r.alpha)
            replace_lowrank(block, name, m,
                            factorize(m.weight.detach(), r.energy, r.min_saving, scale),
                            ranks.setdefault(str(i), {}))

    sequential(model, ids, process)
    note["ranks"] = ranks
    note["layers_low_rank"] = sum(v > 0 for d in ranks.values() for v in d.values())
    return model
