"""GPTQ (Frantar et al., 2022): quantize one column at a time and push its rounding error onto
the columns not yet quantized, weighted by the inverse Hessian ``H = E[x x^T]`` of the layer's
inputs. Groups of ``group_size`` columns share a bf16 scale/zero computed when the group is
reached (or, with ``act_order``, from the original weights up front, so that a group is still
a run of consecutive input columns and the int4 layout stays the plain one).
"""

from __future__ import annotations

from typing import Any

import torch

from edgeweave.compress.calib import LinearStats, sequential
from edgeweave.compress.modules import Int4Linear, QuantEmbedding, set_module
from edgeweave.compress.quant import (
    int4_dequantize,
    int4_qparams,
    int4_quantize,
    pack_nibbles,
    pad_columns,
)
from edgeweave.compress.quantize.rtn import (
    check_groups,
    check_int_zero,
    quantize_embeddings,
    zero_point_of,
)
from edgeweave.compress.recipes import GPTQ, register_method
from edgeweave.models.llama import BlockModel


def inverse_hessian_chol(H: torch.Tensor, W: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of H^-1 after zeroing dead inputs and damping (in place on W)."""
    H = H.clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.mean(torch.diagonal(H)) * torch.eye(H.shape[0])
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    return torch.linalg.cholesky(Hinv, upper=True)


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int,
                  symmetric: bool, act_order: bool = False, damp: float = 0.01,
                  block: int = 128, zero_point: str = "float"
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize ``W`` (N, K), K a multiple of ``group_size``, with Hessian ``H`` (K, K).

    Returns integer codes (N, K) uint8 and bf16-exact scales/zeros (N, K / group_size).
    """
    W = W.float().clone()
    n, k = W.shape
    n_groups = k // group_size
    block = max(block // group_size, 1) * group_size
    scales = torch.zeros(n, n_groups)
    zeros = torch.zeros(n, n_groups)
    perm = torch.arange(k)
    if act_order:
        perm = torch.argsort(torch.diagonal(H), descending=True)
        s, z = int4_qparams(W.reshape(n, n_groups, group_size), bits, symmetric, zero_point)
        scales, zeros = s, z  # static groups from the original weights
        W, H = W[:, perm], H[perm][:, perm]
    U = inverse_hessian_chol(H, W, damp)
    Q = torch.zeros_like(W)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        E1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            g = int(perm[col]) // group_size
            if not act_order and col % group_size == 0:
                s, z = int4_qparams(W1[:, i:i + group_size], bits, symmetric, zero_point)
                scales[:, g], zeros[:, g] = s, z
            w = W1[:, i]
            q = int4_quantize(w[:, None], scales[:, g], zeros[:, g], bits)[:, 0]
            dq = int4_dequantize(q[:, None], scales[:, g], zeros[:, g])[:, 0]
            Q1[:, i] = q
            err = (w - dq) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            E1[:, i] = err
        Q[:, i1:i2] = Q1
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    if act_order:
        Q = Q[:, torch.argsort(perm)]
    return Q.to(torch.uint8), scales, zeros


@register_method(GPTQ)
def apply_gptq(r: GPTQ, model: BlockModel, ctx: Any, note: dict[str, Any]) -> BlockModel:
    check_groups(model, r.group_size, r.pad, "gptq")
    ids = ctx.require_calib("gptq")

    def process(i: int, block: torch.nn.Module, stats: dict[str, LinearStats]) -> None:
        for name, st in stats.items():
            m = block.get_submodule(name)
            k = m.in_features
            W = pad_columns(m.weight.detach().float(), r.group_size)
            H = pad_columns(pad_columns(st.hessian, r.group_size).T, r.group_size).T
            zero_point = zero_point_of(name, r)
            q, s, z = gptq_quantize(W, H, r.bits, r.group_size, r.symmetric, r.act_order, r.damp,
                                    zero_point=zero_point)
            bias = None if m.bias is None else m.bias.detach()
            set_module(block, name, Int4Linear.from_ints(q, s, z, r.group_size, k, r.bits, bias,
                                                         zero_point))

    check_int_zero(model, r, note)
    hs = sequential(model, ids, process)
    # an RTN int8 table and head: nothing for GPTQ to feed
    wide_table = r.embeddings and r.embedding_bits == 8
    if (r.head and not wide_table and model.lm_head is not None
            and (r.embeddings or not model.cfg.tie_word_embeddings)):
        gptq_head(model, hs, r, note)
    if r.embeddings:
        quantize_embeddings(model, 8 if wide_table else 4, r.group_size, r.symmetric, note,
                            r.zero_point)
    note["calibration_tokens"] = int(ids.numel())
    return model


def gptq_head(model: BlockModel, hs: list[torch.Tensor], r: GPTQ, note: dict[str, Any]) -> None:
    """GPTQ the output head on the final normed hidden states. With tied embeddings the same
    int4 table then serves the embedding lookups (4-bit, like RTN would, but error-fed)."""
    st = LinearStats(model.cfg.hidden_size)
    for h in hs:
        st.add(model.norm(h))
    W = model.lm_head.weight.detach().float()
    k = W.shape[1]
    H = pad_columns(pad_columns(st.hessian, r.group_size).T, r.group_size).T
    q, s, z = gptq_quantize(pad_columns(W, r.group_size), H, 4, r.group_size, r.symmetric,
                            r.act_order, r.damp, zero_point=r.zero_point)
    if model.cfg.tie_word_embeddings:
        qe = QuantEmbedding(4, {"qweight": pack_nibbles(q), "scales": s.to(torch.bfloat16),
                                "zeros": z.to(torch.bfloat16)}, k, r.group_size,
                            r.zero_point)
        model.embed_tokens = qe
        model.lm_head = qe.as_linear()
        note["embeddings"] = f"int4 g{r.group_size}, GPTQ on the tied head"
    else:
        model.lm_head = Int4Linear.from_ints(q, s, z, r.group_size, k, 4,
                                             zero_point=r.zero_point)
        note["head"] = f"int4 g{r.group_size} GPTQ"
