"""Round-to-nearest weight quantization (int8 per channel, int4 grouped) and the helpers
every quantizer shares: packing a linear and quantizing the (tied) embedding."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgeweave.compress.calib import block_linears
from edgeweave.compress.modules import Int4Linear, Int8Linear, QuantEmbedding, set_module
from edgeweave.compress.quant import pack_nibbles, pad_columns, rtn_int4, rtn_int8
from edgeweave.compress.recipes import RTN, register_method
from edgeweave.errors import ConfigError
from edgeweave.models.llama import BlockModel


def check_groups(model: BlockModel, group_size: int, pad: bool, method: str) -> None:
    """Every quantized input width must be a multiple of the group size, unless ``pad``."""
    if pad:
        return
    for name, m in block_linears(model):
        if m.in_features % group_size:
            ok = [g for g in (32, 64, 128, 256) if m.in_features % g == 0]
            raise ConfigError(
                f"{method}: group_size={group_size} does not divide the input width "
                f"{m.in_features} of {name}: use group_size in {ok} or pad=True (zero-pads "
                f"that width to a multiple of {group_size})")


def check_int_zero(model: BlockModel, r: Any, note: dict[str, Any]) -> None:
    """Every linear a recipe's ``int_zero`` names exists in the blocks."""
    leaves = {name.rsplit(".", 1)[-1] for name, _ in block_linears(model)}
    unknown = [n for n in r.int_zero if n not in leaves]
    if unknown:
        raise ConfigError(f"{r.method}: int_zero names {unknown}, which no block has: choose "
                          f"among {sorted(leaves)}")
    if r.int_zero:
        note["int_zero"] = list(r.int_zero)


def zero_point_of(name: str, r: Any) -> str:
    """The zero-point kind of the linear ``name`` (full or within a block) under recipe ``r``."""
    return "int" if name.rsplit(".", 1)[-1] in r.int_zero else r.zero_point


def int4_module(w: torch.Tensor, bias: torch.Tensor | None, group_size: int, bits: int,
                symmetric: bool, zero_point: str = "float") -> Int4Linear:
    k = w.shape[1]
    q, s, z = rtn_int4(pad_columns(w, group_size), group_size, bits, symmetric, zero_point)
    return Int4Linear.from_ints(q, s, z, group_size, k, bits, bias, zero_point)


def int8_module(w: torch.Tensor, bias: torch.Tensor | None, mode: str = "w8a16") -> Int8Linear:
    q, s = rtn_int8(w, bf16_scales=mode == "w8a16")
    return Int8Linear(q, s, bias, mode)


def quantize_linear(m: nn.Linear, bits: int, group_size: int | None, symmetric: bool,
                    zero_point: str = "float") -> nn.Module:
    bias = None if m.bias is None else m.bias.detach()
    if bits == 8:
        return int8_module(m.weight.detach(), bias)
    assert group_size is not None
    return int4_module(m.weight.detach(), bias, group_size, bits, symmetric, zero_point)


def quantize_embeddings(model: BlockModel, bits: int, group_size: int, symmetric: bool,
                        note: dict[str, Any], zero_point: str = "float") -> None:
    """Quantize the token embedding (RTN, 4 or 8 bits) and the output head.

    With tied embeddings both use the same integers: the head becomes ``as_linear()`` of the
    quantized table. An untied head is quantized as a linear of its own.
    """
    bits = 8 if bits == 8 else 4
    emb = model.embed_tokens
    if emb is not None and type(emb) is nn.Embedding:
        w = emb.weight.detach()
        dim = w.shape[1]
        if bits == 8:
            q, s = rtn_int8(w)
            qe = QuantEmbedding(8, {"qweight": q, "scales": s}, dim)
        else:
            q, s, z = rtn_int4(pad_columns(w, group_size), group_size, 4, symmetric, zero_point)
            qe = QuantEmbedding(4, {"qweight": pack_nibbles(q), "scales": s.to(torch.bfloat16),
                                    "zeros": z.to(torch.bfloat16)}, dim, group_size,
                                zero_point)
        model.embed_tokens = qe
        if model.cfg.tie_word_embeddings and model.lm_head is not None:
            model.lm_head = qe.as_linear()
    if model.lm_head is not None and type(model.lm_head) is nn.Linear:
        model.lm_head = quantize_linear(model.lm_head, bits, group_size, symmetric, zero_point)
    note["embeddings"] = f"int{bits} RTN" + ("" if bits == 8 else f" g{group_size}")


@register_method(RTN)
def apply_rtn(r: RTN, model: BlockModel, ctx: Any, note: dict[str, Any]) -> BlockModel:
    if r.bits == 4:
        check_groups(model, r.group_size, r.pad, "rtn")
    check_int_zero(model, r, note)
    for name, m in block_linears(model):
        set_module(model, name, quantize_linear(m, r.bits, r.group_size, bool(r.symmetric),
                                                zero_point_of(name, r)))
    if r.embeddings:
        quantize_embeddings(model, r.embedding_bits or r.bits, r.group_size or 128,
                            bool(r.symmetric), note, r.zero_point)
    return model
