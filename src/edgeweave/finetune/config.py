"""Typed, frozen configurations of on-device LoRA fine-tuning (they *are* the API).

Both configs validate in ``__post_init__``, carry a ``version`` and round-trip through JSON
(``to_dict`` / ``from_dict``), so an adapter's manifest records exactly how it was trained.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from edgeweave.errors import ConfigError

LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BASE_DTYPES = ("float32", "bfloat16", "int8")
# an adapter folder (finetune.adapter writes it, runtime.adapters serves it without torch)
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_MANIFEST = "manifest.json"
ADAPTER_KIND = "edgeweave-lora-adapter"
# adapter tensor names: PEFT's keys without the adapter name (A: (r, in), B: (out, r))
ADAPTER_KEY = re.compile(r"^layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)\.lora_([AB])\.weight$")


def parse_key(key: str) -> tuple[int, str, str, str]:
    """``layers.3.self_attn.q_proj.lora_A.weight`` -> ``(3, "self_attn", "q_proj", "A")``."""
    m = ADAPTER_KEY.match(key)
    if m is None:
        raise ConfigError(f"{key!r} is not a LoRA adapter key")
    return int(m.group(1)), m.group(2), m.group(3), m.group(4)


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} fields {unknown}; valid: {sorted(names)}")
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**kw)


@dataclass(frozen=True)
class LoRAConfig:
    """Where and how big the low-rank adapters are.

    ``layers`` selects blocks (``None`` = every block); ``freeze_a`` is LoRA-FA: the random
    down-projection A stays frozen and only B trains, halving adapter optimizer state and
    removing A's activation gradient.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    layers: tuple[int, ...] | None = None
    freeze_a: bool = False
    init_seed: int = 0
    version: int = 1

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"LoRA rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ConfigError(f"LoRA alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        bad = sorted(set(self.target_modules) - set(LINEAR_NAMES))
        if not self.target_modules or bad:
            raise ConfigError(f"target_modules {list(self.target_modules)} invalid; choose "
                              f"from {list(LINEAR_NAMES)}")
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            raise ConfigError(f"layers must be non-empty block indices >= 0, got {self.layers}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoRAConfig:
        return _from_dict(cls, data)


OPTIMIZERS = ("adamw", "sgd")  # built by finetune.train.make_optimizer


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation loop and its memory knobs.

    ``batch_size`` examples make one optimizer step, processed ``micro_batch_size`` at a
    time with gradient accumulation; ``grad_checkpointing`` recomputes each block in the
    backward pass instead of storing its activations; ``base_dtype`` stores the frozen base
    in fp32, bf16 or int8 (per-channel, dequantised per matmul). ``proximal_mu`` > 0 adds
    FedProx's ``mu/2 ||w - w_0||^2`` to the loss. ``optimizer``: ``adamw`` or ``sgd`` (plain
    SGD: what FedAvg's analysis assumes; a fresh AdamW's first steps are sign-like, every
    coordinate moves by ``lr`` whatever its gradient, which a few local steps never outgrow).
    """

    steps: int = 20
    lr: float = 1e-3
    batch_size: int = 4
    micro_batch_size: int = 4
    seq_len: int = 64
    grad_checkpointing: bool = False
    base_dtype: str = "float32"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    proximal_mu: float = 0.0
    checkpoint_every: int = 0
    optimizer: str = "adamw"
    seed: int = 0
    version: int = 1

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.micro_batch_size < 1 or self.batch_size % self.micro_batch_size:
            raise ConfigError(f"batch_size {self.batch_size} must be a positive multiple of "
                              f"micro_batch_size {self.micro_batch_size}")
        if self.seq_len < 2:
            raise ConfigError(f"seq_len must be >= 2, got {self.seq_len}")
        if self.base_dtype not in BASE_DTYPES:
            raise ConfigError(f"base_dtype {self.base_dtype!r} unknown; choose from "
                              f"{list(BASE_DTYPES)}")
        if self.proximal_mu < 0 or self.checkpoint_every < 0:
            raise ConfigError("proximal_mu and checkpoint_every must be >= 0")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer!r} unknown; choose from {OPTIMIZERS}")

    @property
    def accumulation(self) -> int:
        return self.batch_size // self.micro_batch_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, data)
