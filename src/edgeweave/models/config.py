"""Architecture hyper-parameters of the Llama family (Llama, SmolLM2, TinyLlama, Qwen2)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from edgeweave.errors import CheckpointError

# Families differ only in small switches; a registry keeps the per-family defaults out of
# if/elif chains. Qwen2 adds a bias to the q/k/v projections.
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"attention_bias": False},
    "mistral": {"attention_bias": False},
    "qwen2": {"attention_bias": True},
}


@dataclass(frozen=True)
class ModelConfig:
    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_position: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    rope_scaling: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.family not in FAMILY_DEFAULTS:
            raise CheckpointError(
                f"unsupported architecture {self.family!r}: edgeweave runs "
                f"{', '.join(sorted(FAMILY_DEFAULTS))} checkpoints"
            )
        if self.num_heads % self.num_kv_heads:
            raise CheckpointError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def block_params(self) -> int:
        """Parameters of one transformer block (weights and norms)."""
        h, i = self.hidden_size, self.intermediate_size
        attn = h * self.num_heads * self.head_dim * 2 + h * self.kv_dim * 2
        if self.attention_bias:
            attn += self.num_heads * self.head_dim + 2 * self.kv_dim
        return attn + 3 * h * i + 2 * h

    def num_params(self) -> int:
        emb = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else emb
        return emb + head + self.num_layers * self.block_params() + self.hidden_size

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a Hugging Face ``config.json`` dictionary."""
        family = d.get("model_type", "")
        if family not in FAMILY_DEFAULTS:
            raise CheckpointError(
                f"unsupported model_type {family!r} in config.json: edgeweave runs "
                f"{', '.join(sorted(FAMILY_DEFAULTS))} checkpoints"
            )
        heads = int(d["num_attention_heads"])
        hidden = int(d["hidden_size"])
        eos = d.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        return cls(
            family=family,
            vocab_size=int(d["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(d["intermediate_size"]),
            num_layers=int(d["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=int(d.get("head_dim") or hidden // heads),
            rope_theta=float(d.get("rope_theta") or (d.get("rope_parameters") or {}).get(
                "rope_theta", 10000.0)),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)),
            max_position=int(d.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=bool(d.get("attention_bias",
                                      FAMILY_DEFAULTS[family]["attention_bias"])),
            rope_scaling=_rope_scaling(d),
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )

    def to_hf(self) -> dict[str, Any]:
        """A ``config.json`` dictionary that Hugging Face ``transformers`` accepts."""
        d: dict[str, Any] = {
            "model_type": self.family,
            "architectures": [
                {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                 "qwen2": "Qwen2ForCausalLM"}[self.family]
            ],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids) or None,
            "torch_dtype": "float32",
        }
        if self.family == "llama":
            d["attention_bias"] = self.attention_bias
        if self.rope_scaling:
            d["rope_scaling"] = dict(self.rope_scaling)
        return d

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rope_scaling(d: dict[str, Any]) -> dict[str, Any] | None:
    rs = d.get("rope_scaling") or d.get("rope_parameters")
    if not rs:
        return None
    kind = rs.get("rope_type") or rs.get("type")
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        raise CheckpointError(
            f"unsupported rope scaling {kind!r}: edgeweave supports default and llama3 RoPE"
        )
    return dict(rs)
