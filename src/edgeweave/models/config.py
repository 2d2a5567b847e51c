"""Architecture hyper-parameters of the Llama family (Llama, SmolLM2, TinyLlama, Qwen2)."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field
from pathlib import Path
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
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position"):
            v = getattr(self, name)
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
                raise CheckpointError(f"{name} must be a positive integer (got {v!r}): fix the "
                                      "model's config.json or re-export the model")
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
        """Build from a Hugging Face ``config.json`` dictionary (types checked, never parsed
        from strings: a hand-edited ``"hidden_size": "576"`` is refused, not guessed)."""
        if not isinstance(d, dict):
            raise CheckpointError(f"a model config is a JSON object, got {type(d).__name__}: "
                                  "re-export the model's config.json")
        family = d.get("model_type", "")
        if family not in FAMILY_DEFAULTS:
            raise CheckpointError(
                f"unsupported model_type {family!r} in config.json: edgeweave runs "
                f"{', '.join(sorted(FAMILY_DEFAULTS))} checkpoints"
            )
        heads = _field(d, "num_attention_heads", int)
        hidden = _field(d, "hidden_size", int)
        eos = d.get("eos_token_id")
        if isinstance(eos, list) and all(_is(e, int) for e in eos):
            eos_ids = tuple(eos)
        else:
            eos_ids = () if eos is None else (_field(d, "eos_token_id", int, note="or a list of "
                                                     "integers"),)
        rope = d.get("rope_parameters")
        rope_theta = _field(d, "rope_theta", float, None)
        if rope_theta is None and isinstance(rope, dict):
            rope_theta = _field(rope, "rope_theta", float, None)
        return cls(
            family=family,
            vocab_size=_field(d, "vocab_size", int),
            hidden_size=hidden,
            intermediate_size=_field(d, "intermediate_size", int),
            num_layers=_field(d, "num_hidden_layers", int),
            num_heads=heads,
            num_kv_heads=_field(d, "num_key_value_heads", int, None) or heads,
            head_dim=_field(d, "head_dim", int, None) or hidden // max(heads, 1),
            rope_theta=rope_theta or 10000.0,
            rms_norm_eps=_field(d, "rms_norm_eps", float, 1e-5),
            max_position=_field(d, "max_position_embeddings", int, 2048),
            tie_word_embeddings=_field(d, "tie_word_embeddings", bool, False),
            attention_bias=_field(d, "attention_bias", bool,
                                  FAMILY_DEFAULTS[family]["attention_bias"]),
            rope_scaling=_rope_scaling(d),
            bos_token_id=_field(d, "bos_token_id", int, None),
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


_REQUIRED = object()
_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false"}


def _is(value: Any, tp: type) -> bool:
    if isinstance(value, bool):
        return tp is bool
    if tp is float:
        return isinstance(value, int | float) and math.isfinite(value)
    return isinstance(value, tp)


def _field(d: dict[str, Any], key: str, tp: type, default: Any = _REQUIRED, note: str = "") -> Any:
    """``d[key]`` if it has type ``tp`` (null counts as missing when there is a default)."""
    value = d.get(key)
    if value is None:
        if default is _REQUIRED:
            raise CheckpointError(f"the config lacks {key!r}: it is not a complete Hugging "
                                  "Face config; re-export the model")
        return default
    if not _is(value, tp):
        raise CheckpointError(f"{key} must be {_TYPE_WORDS[tp]}{' ' + note if note else ''}, "
                              f"got {type(value).__name__} {value!r:.40}: fix the value or "
                              "re-export the model")
    return float(value) if tp is float else value


def _rope_scaling(d: dict[str, Any]) -> dict[str, Any] | None:
    rs = d.get("rope_scaling") or d.get("rope_parameters")
    if not rs:
        return None
    if not isinstance(rs, dict):
        raise CheckpointError(f"rope_scaling must be an object, got {rs!r:.40}: fix it or "
                              "re-export the model")
    kind = rs.get("rope_type") or rs.get("type")
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        raise CheckpointError(
            f"unsupported rope scaling {kind!r}: edgeweave supports default and llama3 RoPE"
        )
    return dict(rs)


def read_config(folder: str | Path) -> ModelConfig:
    """The :class:`ModelConfig` of a Hugging Face folder's ``config.json`` (no torch needed)."""
    import json

    cfg_file = Path(folder) / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{folder} has no config.json: point at a Hugging Face model folder")
    try:
        d = json.loads(cfg_file.read_bytes().decode("utf-8"))
    except OSError as e:
        raise CheckpointError(f"cannot read {cfg_file}: {e}") from e
    except ValueError as e:  # not UTF-8 (binary garbage) or not JSON
        raise CheckpointError(f"{cfg_file} is not a valid model config ({e}): restore the "
                              "model's config.json or re-download / re-export the model") from e
    try:
        return ModelConfig.from_hf(d)
    except CheckpointError as e:
        raise CheckpointError(f"{cfg_file}: {e}") from e
