"""Gemma 3 (text): ``llama.py``'s block model with Gemma's differences.

* sandwich norms: ``input_layernorm`` -> attention -> ``post_attention_layernorm`` -> residual,
  ``pre_feedforward_layernorm`` -> MLP -> ``post_feedforward_layernorm`` -> residual;
* Gemma's RMSNorm scales by ``1 + weight`` and computes in fp32 (checkpoints store
  ``weight``, as Hugging Face does), also on q and k over ``head_dim`` (QK-norm);
* GeGLU MLP with the tanh approximation of GELU; embeddings times ``sqrt(hidden)``, rounded
  to the weights' dtype first as HF does;
* sliding-window blocks (``cfg.layer_types``) attend to the last ``sliding_window`` keys and
  rotate with ``rope_local_theta``; global blocks with ``rope_theta`` (+ ``rope_scaling``);
* attention scale ``query_pre_attn_scalar ** -0.5``; optional final logit soft-capping.

Module names are HF's (``Gemma3ForCausalLM`` without the ``model.`` prefix), so checkpoints,
PEFT targets and compression rules carry over.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeweave.models.cache import KVCache
from edgeweave.models.config import ModelConfig
from edgeweave.models.llama import (
    MLP,
    Attention,
    BlockModel,
    Rotary,
    attend_packed,
    rope_inv_freq,
)


class GemmaRMSNorm(nn.Module):
    offset = 1.0  # the scale is 1 + weight (exporters fold it in)

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))  # stored as the offset from 1
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (1.0 + self.weight.float())).type_as(x)

    def divide_(self, s: torch.Tensor) -> None:
        """Divide the output's channels by ``s`` in place: the scale is ``1 + weight``."""
        self.weight.copy_((1.0 + self.weight) / s - 1.0)


class Gemma3Attention(Attention):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__(cfg)
        if cfg.attention_bias:  # HF's Gemma 3 biases o_proj too when attention_bias is set
            self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=True)
        self.q_norm = GemmaRMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.k_norm = GemmaRMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.scale = float(cfg.query_pre_attn_scalar or cfg.head_dim) ** -0.5
        self.window = cfg.sliding_window if cfg.is_sliding(layer) else None

    def norm_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q_norm(q), self.k_norm(k)


class GeGLU(MLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class Gemma3Block(nn.Module):
    mlp_norm = "pre_feedforward_layernorm"  # post_attention_layernorm closes the attention

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        h, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(h, eps)
        self.self_attn = Gemma3Attention(cfg, layer)
        self.post_attention_layernorm = GemmaRMSNorm(h, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(h, eps)
        self.mlp = GeGLU(cfg)
        self.post_feedforward_layernorm = GemmaRMSNorm(h, eps)

    def feed_forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))


class Gemma3Model(BlockModel):
    norm_cls = GemmaRMSNorm

    def make_block(self, i: int) -> nn.Module:
        return Gemma3Block(self.cfg, i)

    def init_buffers(self) -> None:
        cfg = self.cfg
        self.rotary = Rotary(cfg)  # global blocks: rope_theta and rope_scaling
        local = cfg.rope_local_theta or cfg.rope_theta
        self.rotary_local = Rotary(cfg, rope_inv_freq(cfg, theta=local, scaled=False))
        self._embed_scale: dict[torch.dtype, torch.Tensor] = {}

    def rotary_for(self, i: int) -> Rotary:
        return self.rotary_local if self.cfg.is_sliding(i) else self.rotary

    def _tables(self, i: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rotary_for(i).tables(end)

    def embed_scale(self) -> float:
        return float(torch.tensor(self.cfg.hidden_size ** 0.5))  # HF's float32 value

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed_tokens(ids)
        scale = self._embed_scale.get(h.dtype)
        if scale is None:  # HF: a float32 sqrt(hidden) cast to the weights' dtype
            scale = torch.tensor(self.cfg.hidden_size ** 0.5).to(h.dtype)
            self._embed_scale[h.dtype] = scale
        return h * scale

    def block(self, i: int, h: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        layer = self.layers[str(i)]
        past = cache.position(i) if cache is not None else 0
        cos, sin = self._tables(i, past + h.shape[1])
        a = layer.self_attn(layer.input_layernorm(h), i, cache, cos, sin)
        return layer.feed_forward(h + layer.post_attention_layernorm(a))

    def block_packed(self, i: int, h: torch.Tensor, caches: list[KVCache],
                     lengths: list[int]) -> torch.Tensor:
        """As ``BlockModel.block_packed``: projections once for all sequences, attention
        per sequence on its own cache."""
        layer = self.layers[str(i)]
        end = max(c.position(i) + t for c, t in zip(caches, lengths, strict=True))
        a = attend_packed(layer.self_attn, layer.input_layernorm(h), i, caches, lengths,
                          *self._tables(i, end))
        return layer.feed_forward(h + layer.post_attention_layernorm(a))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(self.norm(h))
        cap = self.cfg.final_logit_softcapping
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits
