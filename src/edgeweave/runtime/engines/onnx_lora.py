"""LoRA factors as inputs of an ONNX stage graph (no torch, no onnx).

The base stage graph fuses q/k/v into one projection and gate/up into another
(``onnx_export``), so its LoRA twin takes one factor pair per *fused* linear and block:
``lora_a.layers.<i>.<group>`` (in, R) and ``lora_b.layers.<i>.<group>`` (R, out), with the
rank ``R`` a dynamic dimension, and adds ``(x @ A) @ B`` to the fused output. An adapter's
per-module factors become one pair per group: ``A`` is the modules' ``A^T`` side by side,
``B`` block-diagonal, so each module's delta lands on its own output columns and a module
the adapter leaves alone gets none. A group without any LoRA gets a rank-1 pair of zeros.

The same graph serves every adapter (of any rank) and a session binds its adapter's
factors once when it opens; the base graph stays as it is for sessions without one
(onnxruntime-genai's multi-LoRA also feeds adapters as graph inputs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from edgeweave.errors import ConfigError
from edgeweave.runtime.adapters import Adapter

LORA_GRAPH_VERSION = 1  # bump when the LoRA inputs change: cached LoRA graphs are rebuilt
GROUPS: dict[str, tuple[str, ...]] = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",),
                                      "gate_up": ("gate_proj", "up_proj"),
                                      "down": ("down_proj",)}


def input_names(block: int, group: str) -> tuple[str, str]:
    return f"lora_a.layers.{block}.{group}", f"lora_b.layers.{block}.{group}"


def rank_dim(block: int, group: str) -> str:
    return f"lora_rank.layers.{block}.{group}"


def group_widths(group: str, total_out: int, kv_dim: int) -> tuple[int, ...]:
    """Output columns of each module of a fused group, from the fused width."""
    if group == "qkv":
        return (total_out - 2 * kv_dim, kv_dim, kv_dim)
    if group == "gate_up":
        return (total_out // 2, total_out // 2)
    return (total_out,)


def pack(adapter: Adapter, blocks: Sequence[int], shapes: Mapping[str, tuple[int, int]],
         kv_dim: int) -> dict[str, np.ndarray]:
    """The graph inputs of ``adapter`` for ``blocks``; ``shapes`` maps each ``lora_a`` input
    name to the fused linear's ``(in, out)`` (read from the graph)."""
    out: dict[str, np.ndarray] = {}
    for i in blocks:
        for group, modules in GROUPS.items():
            a_name, b_name = input_names(i, group)
            fan_in, fan_out = shapes[a_name]
            widths = group_widths(group, fan_out, kv_dim)
            present = [(m, adapter.factors.get((i, m))) for m in modules]
            rank = sum(f.rank for _, f in present if f is not None)
            a = np.zeros((fan_in, max(rank, 1)), np.float32)
            b = np.zeros((max(rank, 1), fan_out), np.float32)
            r0, c0 = 0, 0
            for (m, f), w in zip(present, widths, strict=True):
                if f is not None and (f.a.shape[1] != fan_in or f.b.shape[0] != w):
                    raise ConfigError(f"adapter {adapter.name}: block {i} {m} maps "
                                      f"{f.a.shape[1]} -> {f.b.shape[0]} features, the stage's "
                                      f"{fan_in} -> {w}: it was trained on another model")
                if f is not None:
                    a[:, r0:r0 + f.rank] = f.a.T
                    b[r0:r0 + f.rank, c0:c0 + w] = f.b.T
                    r0 += f.rank
                c0 += w
            out[a_name], out[b_name] = a, b
    return out
