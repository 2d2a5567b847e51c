"""The cost model (pure): what one block, the embedding and the head cost on a device.

Batch-1 decode of a transformer block reads every weight once per token, so its time is a
roofline ``max(bytes / bandwidth, flops / compute)`` plus a fixed cost per operator
(framework dispatch or kernel launch), which dominates small models. Prefill runs ``P``
tokens through the same weights and is usually compute bound. Bandwidths are multiplied by
the host calibration (the fraction of STREAM bandwidth our decode kernels reach, measured by
``profile.microbench``), so every catalog figure is read as "what this software would get".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgeweave.errors import ConfigError
from edgeweave.profile.variants import CODEC_BYTES, CODEC_TIME_S, CODEC_TOKEN_EXTRA, Variant
from edgeweave.types import DeviceProfile, LinkProfile

# Operators one block dispatches per step in models/llama.py: 2 RMSNorms (6 each), 3+1
# attention projections, views/transposes (6), RoPE on q and k (12), cache append (6), SDPA,
# residual adds (2), MLP (gate, up, silu, mul, down). Counted from the code, ~45.
OPS_PER_BLOCK = 45
OPS_EMBED = 2
OPS_HEAD = 8  # final norm (6) + lm_head + slicing
TOKEN_ID_BYTES = 4

if TYPE_CHECKING:  # importing edgeweave.models pulls in torch
    from edgeweave.models.config import ModelConfig


@dataclass(frozen=True)
class Calibration:
    """Host-measured corrections applied to every device class."""

    bw_efficiency: float = 1.0  # decode GEMV bandwidth / STREAM bandwidth on the host
    source: str = "default (uncalibrated)"


UNCALIBRATED = Calibration()


@dataclass(frozen=True)
class ModelCosts:
    """Per-block and per-token quantities of one model, at a prompt length, context and
    batch (``batch`` sequences decode together: one step reads the weights once and every
    sequence's KV cache).

    ``tied``: the head multiplies by the embedding table itself (``tie_word_embeddings``), so
    a stage holding both the embedding and the head holds that table once; split stages
    each need their own copy. ``sliding_window`` / ``global_every``: layers that attend to
    the last ``sliding_window`` tokens only (Gemma 3: five local layers per global one) keep
    that many tokens of KV cache; the planner prices each block at the average over the
    model's layers (exact for the whole model, within a few blocks' KV for a stage)."""

    name: str
    n_layers: int
    hidden: int
    block_params: int
    embed_params: int
    head_params: int
    n_heads: int
    head_dim: int
    kv_dim: int
    prompt_len: int = 128
    context: int = 512  # tokens held in the KV cache (sizes memory and attention reads)
    tied: bool = False
    batch: int = 1
    sliding_window: int = 0  # 0: every layer attends to the whole context
    global_every: int = 0  # every k-th layer is global when sliding_window is set

    @classmethod
    def from_config(cls, cfg: ModelConfig, name: str = "model", prompt_len: int = 128,
                    context: int = 512, batch: int = 1) -> ModelCosts:
        emb = cfg.vocab_size * cfg.hidden_size
        return cls(name=name, n_layers=cfg.num_layers, hidden=cfg.hidden_size,
                   block_params=cfg.block_params(), embed_params=emb,
                   head_params=emb + cfg.hidden_size, n_heads=cfg.num_heads,
                   head_dim=cfg.head_dim, kv_dim=cfg.kv_dim, prompt_len=prompt_len,
                   context=max(context, prompt_len), tied=cfg.tie_word_embeddings,
                   batch=batch)

    @property
    def kv_tokens(self) -> float:
        """Tokens of KV cache an average block holds (and reads per decode step)."""
        if not self.sliding_window or not self.global_every:
            return float(self.context)
        g = self.n_layers // self.global_every
        local = min(self.context, self.sliding_window)
        return (g * self.context + (self.n_layers - g) * local) / self.n_layers

    # -- per block ------------------------------------------------------------------------
    def block_flops_decode(self) -> float:
        """One step: 2 FLOPs per weight + scores and weighted values over the context,
        for each sequence of the batch."""
        return self.batch * (2.0 * self.block_params
                             + 4.0 * self.n_heads * self.head_dim * self.kv_tokens)

    def block_flops_prefill(self) -> float:
        p = self.prompt_len
        return self.batch * (2.0 * self.block_params * p + 2.0 * self.n_heads * self.head_dim * p * p)

    def block_weight_bytes(self, v: Variant) -> float:
        return self.block_params * v.bytes_per_weight

    def kv_bytes_per_token(self, v: Variant) -> float:
        """Key + value bytes one block caches per token."""
        return 2.0 * self.kv_dim * v.kv_bytes

    def kv_bytes(self, v: Variant) -> float:
        """One block's KV cache for ``context`` tokens of every sequence of the batch."""
        return self.kv_bytes_per_token(v) * self.kv_tokens * self.batch

    def block_memory(self, v: Variant) -> float:
        """Weights + a full KV cache for ``context`` tokens x ``batch`` + prefill activations."""
        act = 4.0 * self.prompt_len * self.hidden * 4 * self.batch  # a few (P, hidden) fp32 buffers
        return self.block_weight_bytes(v) + self.kv_bytes(v) + act

    def activation_bytes(self, codec: str, tokens: int = 1) -> float:
        """Hidden-state bytes on the wire for ``tokens`` tokens encoded with ``codec``."""
        return tokens * (self.hidden * CODEC_BYTES[codec] + CODEC_TOKEN_EXTRA[codec])

    def embed_memory(self, v: Variant) -> float:
        return self.embed_params * v.bytes_per_weight

    def head_memory(self, v: Variant) -> float:
        return self.head_params * v.bytes_per_weight

    def shared_memory(self, v: Variant) -> float:
        """Bytes counted twice when one stage holds both the embedding and a tied head."""
        return self.embed_memory(v) if self.tied else 0.0

    def total_weight_bytes(self, v: Variant) -> float:
        return (self.n_layers * self.block_weight_bytes(v) + self.embed_memory(v)
                + self.head_memory(v) - self.shared_memory(v))


@dataclass(frozen=True)
class StepCost:
    """Seconds for one decode token and for the prefill of the prompt."""

    decode_s: float
    prefill_s: float


def _roofline(bytes_read: float, flops: float, dev: DeviceProfile, v: Variant,
              cal: Calibration, ops: int) -> float:
    bw = dev.mem_bw * cal.bw_efficiency
    return max(bytes_read / bw, flops / dev.ops_per_s(v.precision)) + ops * dev.op_overhead_s


def block_cost(m: ModelCosts, dev: DeviceProfile, v: Variant,
               cal: Calibration = UNCALIBRATED) -> StepCost:
    w = m.block_weight_bytes(v)
    dec = _roofline(w + m.kv_bytes(v), m.block_flops_decode(), dev, v, cal, OPS_PER_BLOCK)
    pre = _roofline(w + m.kv_bytes_per_token(v) * m.prompt_len * m.batch,
                    m.block_flops_prefill(), dev, v, cal, OPS_PER_BLOCK)
    return StepCost(dec, pre)


def embed_cost(m: ModelCosts, dev: DeviceProfile, v: Variant,
               cal: Calibration = UNCALIBRATED) -> StepCost:
    """A lookup: reads one row per token."""
    row = m.hidden * v.bytes_per_weight * m.batch
    return StepCost(_roofline(row, 0.0, dev, v, cal, OPS_EMBED),
                    _roofline(row * m.prompt_len, 0.0, dev, v, cal, OPS_EMBED))


def head_cost(m: ModelCosts, dev: DeviceProfile, v: Variant,
              cal: Calibration = UNCALIBRATED) -> StepCost:
    """Final norm + lm_head on the last position only (prefill too: see LocalEngine)."""
    t = _roofline(m.head_params * v.bytes_per_weight, 2.0 * m.head_params * m.batch, dev, v, cal,
                  OPS_HEAD)
    return StepCost(t, t)


def decode_token_s(m: ModelCosts, dev: DeviceProfile, v: Variant,
                   cal: Calibration = UNCALIBRATED) -> float:
    """Predicted per-token decode latency of the whole model on one device."""
    return (m.n_layers * block_cost(m, dev, v, cal).decode_s + embed_cost(m, dev, v, cal).decode_s
            + head_cost(m, dev, v, cal).decode_s)


def ttft_s(m: ModelCosts, dev: DeviceProfile, v: Variant, cal: Calibration = UNCALIBRATED) -> float:
    return (m.n_layers * block_cost(m, dev, v, cal).prefill_s
            + embed_cost(m, dev, v, cal).prefill_s + head_cost(m, dev, v, cal).prefill_s)


# What a process that hosts stages holds before any weight: the interpreter, numpy, ONNX
# Runtime's libraries and edgeweave (measured here: 63-75 MB resident for `edgeweave node`
# with an int4 SmolLM2 stage, of 207 MB in all). Every stage of a plan runs in such a process,
# so the planner adds it once per stage (a torch stage holds about 330 MB instead: torch
# alone is 245 MB).
STAGE_RUNTIME_BYTES = 72 * 2**20


def model_memory(m: ModelCosts, v: Variant) -> float:
    """The whole model as one stage: the process, weights (a tied table once), KV cache,
    activations."""
    return stage_memory_bytes(m, v, 0, m.n_layers)


def stage_memory_bytes(m: ModelCosts, v: Variant, start: int, end: int) -> float:
    """What the process of stage ``[start, end)`` holds, as the planner counts it."""
    first, last = start == 0, end == m.n_layers
    return (STAGE_RUNTIME_BYTES + (end - start) * m.block_memory(v) + first * m.embed_memory(v)
            + last * m.head_memory(v) - (first and last) * m.shared_memory(v))


def energy_j(seconds: float, dev: DeviceProfile) -> float:
    """Energy of keeping ``dev`` busy for ``seconds`` (active power: whole-device figure)."""
    return seconds * dev.power_active_w


def hop_time_s(nbytes: float, link: LinkProfile, upward: bool,
               bandwidth_scale: float = 1.0) -> float:
    bps = (link.up_bps if upward else link.down_bps) * bandwidth_scale
    return link.latency_s + nbytes * 8.0 / bps


def hop_energy_j(nbytes: float, link: LinkProfile) -> float:
    return nbytes * link.energy_per_byte_j


def codec_time_s(codec: str) -> float:
    return CODEC_TIME_S[codec]


def check_shape(prompt_len: int, context: int, batch: int) -> None:
    """Refuse request shapes that would silently price nothing."""
    for what, v, eg in (("prompt length", prompt_len, "--prompt-len 128"),
                        ("context", context, "--context 4096"), ("batch", batch, "--batch 1")):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{what} must be a positive integer, got {v!r}: e.g. {eg}")
