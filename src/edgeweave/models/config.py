"""Architecture hyper-parameters of the supported families (Llama, SmolLM2, TinyLlama, Mistral,
Qwen2, Qwen3, Gemma 3); which families exist and what tells them apart is ``models.families``."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edgeweave.errors import CheckpointError
from edgeweave.models.families import FAMILIES, family, from_model_type

LAYER_TYPES = ("full_attention", "sliding_attention")


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
    # Gemma 3: per-block attention kind (empty: every block full attention), the window of
    # the sliding blocks, their own RoPE base, the query scale and the final logit soft cap
    layer_types: tuple[str, ...] = ()
    sliding_window: int | None = None
    rope_local_theta: float | None = None
    query_pre_attn_scalar: float | None = None
    final_logit_softcapping: float | None = None

    def __post_init__(self) -> None:
        family(self.family)  # refuses an unknown family with the list of known ones
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
        if self.layer_types:
            if len(self.layer_types) != self.num_layers or not set(self.layer_types) <= set(
                    LAYER_TYPES):
                raise CheckpointError(
                    f"layer_types must name {self.num_layers} blocks, each one of "
                    f"{', '.join(LAYER_TYPES)} (got {list(self.layer_types)!r:.80}): fix the "
                    "model's config.json or re-export the model")
            if "sliding_attention" in self.layer_types and not (
                    isinstance(self.sliding_window, int) and self.sliding_window >= 1):
                raise CheckpointError(f"sliding blocks need a positive sliding_window (got "
                                      f"{self.sliding_window!r}): fix the model's config.json")

    def is_sliding(self, layer: int) -> bool:
        return bool(self.layer_types) and self.layer_types[layer] == "sliding_attention"

    def subset(self, layers: Sequence[int]) -> ModelConfig:
        """The config of a model made of blocks ``layers`` of this one (distillation)."""
        kinds = tuple(self.layer_types[i] for i in layers) if self.layer_types else ()
        return replace(self, num_layers=len(layers), layer_types=kinds)

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def block_params(self) -> int:
        """Parameters of one transformer block (weights and norms)."""
        h, i = self.hidden_size, self.intermediate_size
        fam = FAMILIES[self.family]
        attn = h * self.num_heads * self.head_dim * 2 + h * self.kv_dim * 2
        if self.attention_bias:
            attn += self.num_heads * self.head_dim + 2 * self.kv_dim
        if fam.qk_norm:
            attn += 2 * self.head_dim
        return attn + 3 * h * i + fam.norms_per_block * h

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
        fam = from_model_type(d.get("model_type", ""))
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
        kw: dict[str, Any] = dict(
            family=fam.name,
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
            attention_bias=_field(d, "attention_bias", bool, fam.attention_bias),
            rope_scaling=_rope_scaling(d),
            bos_token_id=_field(d, "bos_token_id", int, None),
            eos_token_ids=eos_ids,
        )
        extra = _EXTRA_FROM_HF.get(fam.name)
        if extra:
            kw.update(extra(d))
        return cls(**kw)

    def to_hf(self) -> dict[str, Any]:
        """A ``config.json`` dictionary that Hugging Face ``transformers`` accepts."""
        fam = FAMILIES[self.family]
        d: dict[str, Any] = {
            "model_type": fam.hf_model_type,
            "architectures": [fam.architecture],
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
            "hidden_act": fam.hidden_act,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids) or None,
            "torch_dtype": "float32",
        }
        if not fam.attention_bias:  # Qwen2's HF config has no such key (always biased)
            d["attention_bias"] = self.attention_bias
        if self.rope_scaling:
            d["rope_scaling"] = dict(self.rope_scaling)
        extra = _EXTRA_TO_HF.get(self.family)
        if extra:
            d.update(extra(self))
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


ROPE_SCALINGS = ("llama3", "linear")


def _rope_scaling(d: dict[str, Any]) -> dict[str, Any] | None:
    rs = d.get("rope_scaling") or d.get("rope_parameters")
    if isinstance(rs, dict) and isinstance(rs.get("full_attention"), dict):
        rs = rs["full_attention"]  # per-layer-type parameters (Gemma 3): the global blocks'
    if not rs:
        return None
    if not isinstance(rs, dict):
        raise CheckpointError(f"rope_scaling must be an object, got {rs!r:.40}: fix it or "
                              "re-export the model")
    kind = rs.get("rope_type") or rs.get("type")
    if kind in (None, "default"):
        return None
    if kind not in ROPE_SCALINGS:
        raise CheckpointError(
            f"unsupported rope scaling {kind!r}: edgeweave supports default, "
            f"{', '.join(ROPE_SCALINGS)} RoPE"
        )
    if not _is(rs.get("factor"), float) or rs["factor"] <= 0:
        raise CheckpointError(f"{kind} rope scaling needs a positive factor (got "
                              f"{rs.get('factor')!r:.40}): fix the model's config.json")
    return dict(rs)


def _refuse(d: dict[str, Any], key: str, allowed: Any, what: str) -> None:
    if d.get(key) not in allowed:
        raise CheckpointError(f"{key}={d.get(key)!r:.40} is not supported: edgeweave runs "
                              f"{what}; use a checkpoint without it")


def _qwen3_from_hf(d: dict[str, Any]) -> dict[str, Any]:
    _refuse(d, "use_sliding_window", (None, False), "Qwen3 with full attention in every block")
    _refuse(d, "hidden_act", (None, "silu"), "Qwen3 with a SiLU MLP")
    return {}


def _gemma3_from_hf(d: dict[str, Any]) -> dict[str, Any]:
    _refuse(d, "attn_logit_softcapping", (None,), "Gemma 3 without attention soft-capping")
    _refuse(d, "use_bidirectional_attention", (None, False), "causal Gemma 3")
    _refuse(d, "hidden_activation", (None, "gelu_pytorch_tanh"), "Gemma 3 with gelu-tanh")
    n = _field(d, "num_hidden_layers", int)
    kinds = d.get("layer_types")
    if kinds is None:  # older configs: every `pattern`-th block is global, the rest slide
        pattern = _field(d, "sliding_window_pattern", int, None) or _field(
            d, "_sliding_window_pattern", int, 6)
        kinds = ["sliding_attention" if (i + 1) % pattern else "full_attention"
                 for i in range(n)]
    if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
        raise CheckpointError(f"layer_types must be a list of strings, got {kinds!r:.60}: "
                              "fix the model's config.json")
    rope = d.get("rope_parameters")
    local = _field(d, "rope_local_base_freq", float, None)
    glob = _field(d, "rope_theta", float, None)
    if isinstance(rope, dict):
        if isinstance(rope.get("sliding_attention"), dict):
            local = _field(rope["sliding_attention"], "rope_theta", float, local)
            _refuse(rope["sliding_attention"], "rope_type", (None, "default"),
                    "Gemma 3 with plain RoPE in the sliding blocks")
        if isinstance(rope.get("full_attention"), dict):
            glob = _field(rope["full_attention"], "rope_theta", float, glob)
    return {
        "layer_types": tuple(kinds),
        "sliding_window": _field(d, "sliding_window", int, 4096),
        "rope_local_theta": local or 10_000.0,
        "rope_theta": glob or 1_000_000.0,  # Gemma 3's own defaults, as HF's config
        "query_pre_attn_scalar": _field(d, "query_pre_attn_scalar", float, 256.0),
        "final_logit_softcapping": _field(d, "final_logit_softcapping", float, None),
        "tie_word_embeddings": _field(d, "tie_word_embeddings", bool, True),
        "rms_norm_eps": _field(d, "rms_norm_eps", float, 1e-6),
    }


def _gemma3_to_hf(c: ModelConfig) -> dict[str, Any]:
    q = c.query_pre_attn_scalar
    return {
        "hidden_activation": "gelu_pytorch_tanh",
        "layer_types": list(c.layer_types),
        "sliding_window": c.sliding_window,
        "rope_local_base_freq": c.rope_local_theta,
        # HF's strict config wants an integer here (256 in every released Gemma 3)
        "query_pre_attn_scalar": int(q) if q is not None and q == int(q) else q,
        "final_logit_softcapping": c.final_logit_softcapping,
        "attn_logit_softcapping": None,
    }


# Family-specific config.json keys, by family name (the common ones are read above).
_EXTRA_FROM_HF: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "qwen3": _qwen3_from_hf,
    "gemma3": _gemma3_from_hf,
}
_EXTRA_TO_HF: dict[str, Callable[[ModelConfig], dict[str, Any]]] = {"gemma3": _gemma3_to_hf}


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
