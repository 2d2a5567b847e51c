"""Our compact Llama-family model, split into independently runnable blocks.

``embed(ids) -> h``, ``block(i, h, cache) -> h`` and ``head(h) -> logits`` are the whole
API: any half-open range of blocks ``[start, end)`` runs on its own with its own
:class:`KVCache`, which is what pipeline stages and the planner build on. Module names match
Hugging Face's so checkpoints, PEFT target names and compression rules carry over.

``BlockModel(cfg)`` builds the class of ``cfg.family`` (``models.families``): Qwen3 and
Gemma 3 subclass this one in their own files and override only what differs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgeweave.models.cache import KVCache
from edgeweave.models.config import ModelConfig
from edgeweave.types import Shard


class RMSNorm(nn.Module):
    offset = 0.0  # the scale is offset + weight (Gemma's norms: 1 + weight)

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps))

    def divide_(self, s: torch.Tensor) -> None:
        """Divide the output's channels by ``s`` in place (SmoothQuant folds its scales)."""
        self.weight.div_(s)


def rope_inv_freq(cfg: ModelConfig, theta: float | None = None,
                  scaled: bool = True) -> torch.Tensor:
    """RoPE inverse frequencies of base ``theta`` (default ``cfg.rope_theta``), with
    ``cfg.rope_scaling`` applied when ``scaled`` (Gemma 3's sliding blocks use neither)."""
    theta = cfg.rope_theta if theta is None else theta
    inv = 1.0 / (theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float64)
                           / cfg.head_dim))
    rs = cfg.rope_scaling if scaled else None
    if rs and (rs.get("rope_type") or rs.get("type")) == "linear":  # positions / factor
        return (inv / rs["factor"]).float()
    if rs:  # Llama 3 frequency-dependent scaling
        factor = rs["factor"]
        low, high = rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
        old = rs.get("original_max_position_embeddings", 8192)
        wavelen = 2 * math.pi / inv
        smooth = (old / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > old / low, inv / factor, inv)
        mid = (wavelen <= old / low) & (wavelen >= old / high)
        inv = torch.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)
    return inv.float()


class Rotary(nn.Module):
    """Cos/sin tables, grown on demand; HF's rotate-half convention."""

    def __init__(self, cfg: ModelConfig, inv_freq: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("inv_freq", rope_inv_freq(cfg) if inv_freq is None else inv_freq,
                             persistent=False)
        self._cos = torch.empty(0)
        self._sin = torch.empty(0)

    def tables(self, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cos.shape[0] < end:
            n = max(end, 2 * self._cos.shape[0], 256)
            t = torch.arange(n, dtype=torch.float32)
            freqs = torch.outer(t, self.inv_freq)
            emb = torch.cat([freqs, freqs], dim=-1)
            self._cos, self._sin = emb.cos(), emb.sin()
        return self._cos, self._sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past: int,
                     window: int | None = None, scale: float | None = None) -> torch.Tensor:
    """SDPA of (B, nh, T, hd) queries at positions ``past..past+T`` over every cached key
    (B, kv, past+T, hd); with ``window`` query ``p`` sees only keys ``p-window < j <= p``
    (HF's sliding window). ``scale`` defaults to ``hd ** -0.5``."""
    t, n = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if window is not None and n > window:
        if t == 1:  # decode: the window is the last `window` keys, no mask needed
            return F.scaled_dot_product_attention(q, k[:, :, -window:], v[:, :, -window:],
                                                  scale=scale, enable_gqa=gqa)
        qpos = torch.arange(past, past + t).unsqueeze(1)
        kpos = torch.arange(n).unsqueeze(0)
        mask = (kpos <= qpos) & (kpos > qpos - window)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                              enable_gqa=gqa)
    if t == 1:
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
    if past == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                              enable_gqa=gqa)
    # chunk after a prefix: query i sees keys up to past + i
    mask = torch.ones(t, past + t, dtype=torch.bool).tril(diagonal=past)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


class Attention(nn.Module):
    # per-instance in subclasses: Gemma 3's sliding blocks and its query_pre_attn_scalar
    window: int | None = None
    scale: float | None = None

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h, hd = cfg.hidden_size, cfg.head_dim
        self.n_heads, self.n_kv, self.head_dim = cfg.num_heads, cfg.num_kv_heads, hd
        self.q_proj = nn.Linear(h, cfg.num_heads * hd, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(h, cfg.kv_dim, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(h, cfg.kv_dim, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(cfg.num_heads * hd, h, bias=False)

    def forward(self, x: torch.Tensor, layer: int, cache: KVCache | None,
                cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        out = self.attend(self.q_proj(x), self.k_proj(x), self.v_proj(x), layer, cache, cos, sin)
        return self.o_proj(out)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int,
               cache: KVCache | None, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotary, cache append and attention of one sequence's projections (B, T, heads * hd)
        -> (B, T, nh * hd); a batched step calls it per sequence on packed projections."""
        b, t, _ = q.shape
        q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(b, t, self.n_kv, self.head_dim).transpose(1, 2)  # (B, kv, T, hd)
        v = v.view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = self.norm_qk(q, k)
        past = cache.position(layer) if cache is not None else 0
        # tables are fp32; a bf16/fp16 model must not be promoted (or mismatch) by them
        c, s = cos[past:past + t].to(q.dtype), sin[past:past + t].to(q.dtype)
        q, k = apply_rope(q, c, s), apply_rope(k, c, s)
        if cache is not None:
            k, v = cache.append(layer, k, v)
        out = causal_attention(q, k, v, past, self.window, self.scale)
        return out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)

    def norm_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """QK-norm hook (Qwen3, Gemma 3) on (B, heads, T, hd); Llama has none."""
        return q, k


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(h, i, bias=False)
        self.up_proj = nn.Linear(h, i, bias=False)
        self.down_proj = nn.Linear(i, h, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    attention_cls: type[Attention] = Attention
    mlp_norm = "post_attention_layernorm"  # the norm whose output feeds the MLP

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = self.attention_cls(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)


def attend_packed(att: nn.Module, x: torch.Tensor, layer: int, caches: list[KVCache],
                  lengths: list[int], cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Attention of sequences packed back to back in ``x`` (1, sum(lengths), H): the q/k/v
    and output projections run once for all of them (one weight read), attention per
    sequence on its own cache. Every family's batched block uses it."""
    q, k, v = att.q_proj(x), att.k_proj(x), att.v_proj(x)
    outs, at = [], 0
    for cache, t in zip(caches, lengths, strict=True):
        end = at + t
        outs.append(att.attend(q[:, at:end], k[:, at:end], v[:, at:end], layer, cache, cos, sin))
        at = end
    return att.o_proj(torch.cat(outs, dim=1))


class BlockModel(nn.Module):
    """Llama-family decoder holding the blocks of ``shard`` (all blocks by default).

    The embedding is kept when the shard starts at block 0, the final norm and head when it
    ends at the last block (with tied embeddings the head shares the embedding matrix).
    """

    norm_cls: type[nn.Module] = RMSNorm  # the final norm's class (Gemma's is 1 + weight)

    def __new__(cls, *args: object, **kwargs: object) -> BlockModel:
        # BlockModel(cfg) builds cfg's family, so every caller (loader, artifacts,
        # distillation, tests) gets the right class without knowing the families; copy and
        # pickle call __new__ without arguments and keep the class they have.
        cfg = args[0] if args else kwargs.get("cfg")
        if cls is BlockModel and isinstance(cfg, ModelConfig):
            from edgeweave.models.families import family

            cls = family(cfg.family).model_cls()
        return super().__new__(cls)

    def __init__(self, cfg: ModelConfig, shard: Shard | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.shard = shard or Shard(0, cfg.num_layers, cfg.num_layers)
        sh = self.shard
        self.embed_tokens = (nn.Embedding(cfg.vocab_size, cfg.hidden_size)
                             if sh.is_first or (sh.is_last and cfg.tie_word_embeddings) else None)
        self.layers = nn.ModuleDict({str(i): self.make_block(i) for i in range(sh.start, sh.end)})
        self.norm = self.norm_cls(cfg.hidden_size, cfg.rms_norm_eps) if sh.is_last else None
        self.lm_head = None
        if sh.is_last:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
            if cfg.tie_word_embeddings:
                self.lm_head.weight = self.embed_tokens.weight
        self.init_buffers()

    def make_block(self, i: int) -> nn.Module:
        return Block(self.cfg)

    def rotary_for(self, i: int) -> Rotary:
        """The RoPE tables block ``i`` rotates with (Gemma 3: two kinds)."""
        return self.rotary

    def embed_scale(self) -> float | None:
        """A factor on the embedding rows (Gemma: sqrt(hidden)); None: none."""
        return None

    def init_buffers(self) -> None:
        """(Re)build the non-persistent buffers (RoPE tables): a model built on the meta
        device calls it again once its weights are loaded."""
        self.rotary = Rotary(self.cfg)

    # -- the three primitives -------------------------------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, hidden)."""
        return self.embed_tokens(ids)

    def block(self, i: int, h: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Run block ``i`` on ``h`` (B, T, hidden), appending to ``cache`` when given."""
        layer = self.layers[str(i)]
        past = cache.position(i) if cache is not None else 0
        cos, sin = self.rotary.tables(past + h.shape[1])
        h = h + layer.self_attn(layer.input_layernorm(h), i, cache, cos, sin)
        return h + layer.mlp(layer.post_attention_layernorm(h))

    def block_packed(self, i: int, h: torch.Tensor, caches: list[KVCache],
                     lengths: list[int]) -> torch.Tensor:
        """Block ``i`` for several sequences at once: ``h`` (1, sum(lengths), hidden) holds
        their tokens back to back, sequence ``j`` owns ``lengths[j]`` of them and appends to
        ``caches[j]``. Norms, projections and the MLP run once on every token (one weight
        read for the whole batch); only attention runs per sequence, on its own cache."""
        layer = self.layers[str(i)]
        end = max(c.position(i) + t for c, t in zip(caches, lengths, strict=True))
        h = h + attend_packed(layer.self_attn, layer.input_layernorm(h), i, caches, lengths,
                              *self.rotary.tables(end))
        return h + layer.mlp(layer.post_attention_layernorm(h))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """(B, T, hidden) -> (B, T, vocab) logits."""
        return self.lm_head(self.norm(h))

    # -- conveniences built on the primitives ---------------------------------------------
    def new_cache(self, max_len: int, batch: int = 1) -> KVCache:
        dtype = next(self.parameters()).dtype
        return KVCache(self.cfg, self.shard.start, self.shard.end, max_len, batch, dtype)

    def run_blocks(self, h: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        for i in range(self.shard.start, self.shard.end):
            h = self.block(i, h, cache)
        return h

    def forward(self, ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Whole-model forward (needs the full shard): ids -> logits."""
        return self.head(self.run_blocks(self.embed(ids), cache))
