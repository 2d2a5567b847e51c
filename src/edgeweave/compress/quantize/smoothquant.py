"""SmoothQuant W8A8 (Xiao et al., 2022), our activation-aware method.

Why this one and not AWQ: our int8 kernel (fbgemm dynamic linear) quantizes *activations*
per tensor at run time, with 7 bits on CPUs without VNNI. The error an int8 model makes here is
therefore dominated by activation outlier channels, which is exactly what SmoothQuant removes:
it divides each input channel ``j`` by ``s_j = max|x_j|^a / max|W_:,j|^(1-a)`` and multiplies
the weights' column ``j`` by ``s_j`` (mathematically the same layer), moving the outliers into
the per-channel-quantized weights. The division folds into the preceding op, so nothing is
added at run time:

* ``input_layernorm.weight`` absorbs the scales of q/k/v (one shared input),
* the norm before the MLP (``post_attention_layernorm``; Gemma 3's
  ``pre_feedforward_layernorm``, whose scale is ``1 + weight``) those of gate/up,
* rows of ``up_proj`` those of ``down_proj`` (its input is ``silu(gate) * up``).
``o_proj`` is left as is: with grouped-query attention its input channels cannot be rescaled
through ``v_proj`` independently per head. For int4, GPTQ is our weight-only method.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgeweave.compress.calib import LinearStats, block_linears, sequential
from edgeweave.compress.modules import set_module
from edgeweave.compress.quantize.rtn import int8_module, quantize_embeddings
from edgeweave.compress.recipes import SmoothQuant, register_method
from edgeweave.models.llama import BlockModel

STATS = ("self_attn.q_proj", "mlp.gate_proj", "mlp.down_proj")  # the inputs measured


def groups(block: nn.Module) -> tuple[tuple[str, tuple[str, ...], str], ...]:
    """(input statistics from, linears sharing that input, where the 1/s folds)."""
    return (
        ("self_attn.q_proj", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "input_layernorm"),
        ("mlp.gate_proj", ("mlp.gate_proj", "mlp.up_proj"), block.mlp_norm),
        ("mlp.down_proj", ("mlp.down_proj",), "mlp.up_proj"),
    )


def smooth_scales(absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    wmax = torch.stack([w.abs().amax(0) for w in weights]).amax(0)
    s = absmax.clamp(min=1e-5).pow(alpha) / wmax.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5)


@torch.no_grad()
def smooth_block(block: nn.Module, stats: dict[str, LinearStats], alpha: float) -> list[float]:
    ratios = []
    for stat_name, consumers, fold in groups(block):
        lins = [block.get_submodule(n) for n in consumers]
        s = smooth_scales(stats[stat_name].absmax, [m.weight for m in lins], alpha)
        for m in lins:
            m.weight.mul_(s[None, :])
        target = block.get_submodule(fold)
        if isinstance(target, nn.Linear):  # up_proj rows feed down_proj's input channels
            target.weight.div_(s[:, None])
            if target.bias is not None:
                target.bias.div_(s)
        else:  # a norm: its own rule (Gemma's scale is 1 + weight)
            target.divide_(s)
        ratios.append(float(s.max() / s.min()))
    return ratios


@register_method(SmoothQuant)
def apply_smoothquant(r: SmoothQuant, model: BlockModel, ctx: Any, note: dict[str, Any]
                      ) -> BlockModel:
    ids = ctx.require_calib("smoothquant")
    spread: list[float] = []
    sequential(model, ids, lambda i, blk, st: spread.extend(smooth_block(blk, st, r.alpha)),
               names=STATS)
    for name, m in block_linears(model):
        bias = None if m.bias is None else m.bias.detach()
        set_module(model, name, int8_module(m.weight.detach(), bias, mode="w8a8"))
    if r.embeddings:
        quantize_embeddings(model, 8, 128, True, note)
    note["max_scale_spread"] = max(spread) if spread else 1.0
    return model
