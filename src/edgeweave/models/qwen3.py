"""Qwen3: the Llama block with QK-norm and no q/k/v bias.

Each head's query and key pass an RMSNorm over ``head_dim`` (weights ``self_attn.q_norm`` and
``self_attn.k_norm``, shared by all heads) before RoPE; everything else is ``llama.py``'s.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeweave.models.config import ModelConfig
from edgeweave.models.llama import Attention, Block, BlockModel, RMSNorm


class Qwen3Attention(Attention):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)

    def norm_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q_norm(q), self.k_norm(k)  # over the last axis, head_dim


class Qwen3Block(Block):
    attention_cls = Qwen3Attention


class Qwen3Model(BlockModel):
    def make_block(self, i: int) -> nn.Module:
        return Qwen3Block(self.cfg)
