"""The typed, frozen configuration of a federated run, and its flat Flower form.

Flower's run config is a flat ``{str: int|float|str|bool}`` mapping (``pyproject.toml``
``[tool.flwr.app.config]`` or ``--run-config``); :meth:`FedConfig.to_run_config` and
:meth:`FedConfig.from_run_config` convert both ways so simulation and deployment share one
source of truth.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from edgeweave.errors import ConfigError
from edgeweave.federated.hetero import DEFAULT_TIERS, Tier
from edgeweave.finetune.config import OPTIMIZERS, LoRAConfig
from edgeweave.models.catalog import DEFAULT_MODEL

AGGREGATIONS = ("fedavg", "pad", "svd")
SERVER_OPTS = ("avg", "adam", "avgm", "fedexp")

LR_SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda t: 1.0,
    "linear": lambda t: 1.0 - t,
    "cosine": lambda t: 0.5 * (1.0 + math.cos(math.pi * t)),
}
"""Client learning-rate shape over the rounds: ``t`` runs from 0 (round 1) to 1 (last
round) and the result blends ``lr`` (1) into ``lr * lr_final`` (0)."""


@dataclass(frozen=True)
class FedConfig:
    """One federated LoRA run.

    ``region`` is the half-open block range that carries adapters (``None`` = every block);
    blocks below it are frozen and adapter-free, so clients cache their hidden states.
    ``scale`` is LoRA's alpha/rank, equal for every client whatever its rank.
    ``client_memory_mb`` gives each client's memory (its tier); empty = cycle the tiers.
    ``aggregation``: ``fedavg`` (same shapes), ``pad`` (zero-pad/truncate) or ``svd``
    (SVD redistribution). ``server_opt``: ``avg`` (FedAvg/FedProx), ``adam`` (FedAdam) or
    ``avgm`` (FedAvgM, server momentum) or ``fedexp`` (FedExP: the server steps along the
    average update by a factor >= 1 it computes each round from how far the clients'
    updates disagree); ``server_lr``/``server_momentum`` 0 take the optimizer's default
    (Adam: lr 1e-3, beta1 0.9; FedAvgM: lr 1, momentum 0.9; FedExP has none).
    ``client_optimizer``: ``adamw`` or ``sgd`` for the local steps (FedOpt's pairing is SGD
    on clients, an adaptive optimizer on the server).
    ``lr_schedule`` decays the clients' lr over the rounds (``constant``, ``linear``,
    ``cosine``) down to ``lr * lr_final`` in the last round: under label skew each client's
    local steps pull the adapter towards its own labels, and at a constant lr the average
    swings between rounds (held-out accuracy ±0.15 at lr 6e-3); a shrinking step settles it.
    ``probe``: query new nodes for their memory before their first round; off, a new node
    trains the smallest tier's share once and its reply carries its profile (one message
    fewer per node: in deployment every message starts a ClientApp process).
    ``dp_clip`` > 0 turns on Flower's ``LocalDpMod`` on every client.
    ``freeze_a``: LoRA-FA/FFA-LoRA: every client keeps the shared random A (its rank's rows
    of it) and trains only B, so averaging B averages the updates ``B A`` exactly (plain
    LoRA averages A and B separately, and the mean of products is not the product of means).
    ``drift``: ``scaffold`` corrects every local step with SCAFFOLD control variates (see
    :mod:`edgeweave.federated.scaffold`; each client's own variate stays in its Flower
    ``context.state``).
    ``keep_optimizer`` (the default; False starts a fresh optimizer every round): each client
    keeps its AdamW state (step count and moments, per adapter key) in its Flower
    ``context.state`` and resumes it next round. A fresh AdamW's first steps move every
    coordinate by about ``lr`` whatever its gradient's noise; with a few local steps per round
    that is every step (measured at a constant lr: centralized training in the federation's 64
    steps x batch 32 reaches 0.94 held-out accuracy, restarted every 4 steps 0.77; a cosine lr
    hides most of it for one large batch, 0.94, not for eight homes' small ones).
    ``logit_adjust`` tau > 0: every home trains on its answer logits plus
    ``tau * log(K * pi_home(label))``, its own add-one-smoothed label prior (logit adjustment,
    as FedLC does against label skew; :mod:`edgeweave.federated.prior`), so that the shared
    adapter learns the sensor evidence the homes agree on, not each home's label mix. 0 is
    off; it needs a task with label sets (``iot``).
    ``local_epochs`` E > 0: each home takes ``ceil(E * n_home / batch_size)`` steps a round
    instead of ``local_steps`` for all (McMahan et al.'s FedAvg with E local epochs): a home
    with ten times the examples does ten times the work, where fixed steps let the biggest
    homes, which carry most of the FedAvg weight, see a fraction of their data each round
    (measured: no gain on the iot task's skewed splits at E 0.5, about the same steps a round).
    ``synthetic_per_label`` > 0: before round 1 the server trains the global adapter for
    ``synthetic_steps`` steps on examples the base model writes itself, in each task's format
    (GPT-FL; :mod:`edgeweave.federated.synthetic`). Only for the ``iot`` task.
    """

    model: str = DEFAULT_MODEL
    task: str = "iot"
    num_clients: int = 8
    rounds: int = 5
    aggregation: str = "pad"
    server_opt: str = "avg"
    server_lr: float = 0.0
    server_momentum: float = 0.0
    proximal_mu: float = 0.0
    client_optimizer: str = "adamw"
    local_steps: int = 5
    local_epochs: float = 0.0  # > 0: each home takes ceil(E * its examples / batch) steps
    lr: float = 2e-3
    lr_schedule: str = "constant"
    lr_final: float = 0.1
    batch_size: int = 4
    seq_len: int = 96
    dirichlet_alpha: float = 0.5
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    region: tuple[int, int] | None = None
    scale: float = 2.0
    tiers: tuple[Tier, ...] = DEFAULT_TIERS
    client_memory_mb: tuple[int, ...] = ()
    base_dtype: str = "float32"
    timeout_s: float = 600.0
    min_clients: int = 0  # wait for this many nodes (0 = num_clients)
    probe: bool = True  # ask new nodes for their profile first (else: learn it from replies)
    freeze_a: bool = False
    drift: str = "none"  # "scaffold": control variates against client drift
    keep_optimizer: bool = True  # each client resumes its own optimizer state every round
    logit_adjust: float = 0.0  # tau of the per-home label-prior logit adjustment (0 = off)
    synthetic_per_label: int = 0  # GPT-FL warm-up: synthetic examples per label (0 = off)
    synthetic_steps: int = 16  # server-side training steps on them
    dp_clip: float = 0.0
    dp_epsilon: float = 1.0
    dp_delta: float = 1e-5
    seed: int = 0
    version: int = field(default=1)

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(f"aggregation {self.aggregation!r}: choose from {AGGREGATIONS}")
        if self.client_optimizer not in OPTIMIZERS:
            raise ConfigError(f"client_optimizer {self.client_optimizer!r}: choose from "
                              f"{OPTIMIZERS}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule {self.lr_schedule!r}: choose from "
                              f"{tuple(LR_SCHEDULES)}")
        if not 0.0 <= self.lr_final <= 1.0:
            raise ConfigError(f"lr_final is a fraction of lr in [0, 1] (got {self.lr_final})")
        if self.server_opt not in SERVER_OPTS:
            raise ConfigError(f"server_opt {self.server_opt!r}: choose from {SERVER_OPTS}")
        if self.server_opt != "avg" and self.aggregation == "svd":
            raise ConfigError(f"server_opt {self.server_opt!r} keeps state per factor, which "
                              "needs factor-aligned aggregation: the SVD re-basis "
                              "changes every round; use aggregation='pad' or 'fedavg'")
        if self.freeze_a and self.aggregation == "svd":
            raise ConfigError("freeze_a keeps A fixed, but SVD redistribution re-bases A every "
                              "round: use aggregation='pad' or 'fedavg' with freeze_a")
        if self.drift not in ("none", "scaffold"):
            raise ConfigError(f"drift {self.drift!r}: choose from ('none', 'scaffold')")
        if self.drift == "scaffold" and self.aggregation == "svd":
            raise ConfigError("drift='scaffold' keeps control variates per factor, but SVD "
                              "redistribution re-bases the factors every round: use "
                              "aggregation='pad' or 'fedavg' with scaffold")
        if not 0.0 <= self.logit_adjust <= 4.0:
            raise ConfigError(f"logit_adjust is tau in [0, 4] (1 = Menon et al.'s logit "
                              f"adjustment, 0 = off), got {self.logit_adjust}")
        if self.logit_adjust and self.task != "iot":
            raise ConfigError(f"logit adjustment needs a task with label sets: task='iot' "
                              f"(got {self.task!r})")
        if self.synthetic_per_label < 0 or self.synthetic_steps < 1:
            raise ConfigError("synthetic_per_label must be >= 0 and synthetic_steps >= 1")
        if self.synthetic_per_label and self.task != "iot":
            raise ConfigError(f"the synthetic warm-up writes IoT sensor windows: it needs "
                              f"task='iot' (got {self.task!r})")
        if not 0.0 <= self.local_epochs <= 16.0:
            raise ConfigError(f"local_epochs is E in [0, 16] (each home's passes over its own "
                              f"examples per round; 0 = local_steps for every home), got "
                              f"{self.local_epochs}")
        if self.num_clients < 1 or self.rounds < 1 or self.local_steps < 1:
            raise ConfigError("num_clients, rounds and local_steps must be >= 1")
        if self.region is not None and not 0 <= self.region[0] < self.region[1]:
            raise ConfigError(f"region {self.region} must be a half-open [start, end) range")
        ranks = {t.rank for t in self.tiers}
        if self.aggregation == "fedavg" and len(ranks) > 1:
            raise ConfigError("fedavg needs one rank for every tier; use 'pad' or 'svd' for "
                              "rank-heterogeneous clients")
        if self.client_memory_mb and len(self.client_memory_mb) != self.num_clients:
            raise ConfigError("client_memory_mb needs one entry per client")

    @property
    def max_rank(self) -> int:
        return max(t.rank for t in self.tiers)

    def client_lr(self, server_round: int) -> float:
        """The clients' lr in round ``server_round`` (1-based) under ``lr_schedule``."""
        t = 0.0 if self.rounds <= 1 else min(max(server_round - 1, 0) / (self.rounds - 1), 1.0)
        shape = LR_SCHEDULES[self.lr_schedule](t)
        return self.lr * (self.lr_final + (1.0 - self.lr_final) * shape)

    def memory_of(self, partition: int) -> int:
        if self.client_memory_mb:
            return self.client_memory_mb[partition]
        ordered = sorted(self.tiers, key=lambda t: t.memory_mb)
        return ordered[partition % len(ordered)].memory_mb

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_run_config(self) -> dict[str, Any]:
        """Flat Flower run config (the whole config travels as JSON under ``edgeweave``,
        plus the keys a ClientApp reads directly)."""
        return {"edgeweave": json.dumps(self.to_dict()), "model": self.model, "task": self.task,
                "num-clients": self.num_clients, "seq-len": self.seq_len,
                "alpha": self.dirichlet_alpha, "seed": self.seed,
                "targets": ",".join(self.targets), "scale": self.scale,
                "region": "" if self.region is None else f"{self.region[0]}-{self.region[1]}",
                "base-dtype": self.base_dtype, "freeze-a": self.freeze_a}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FedConfig:
        names = {f.name for f in fields(cls)}
        bad = sorted(set(d) - names)
        if bad:
            raise ConfigError(f"unknown FedConfig fields {bad}")
        d = dict(d)
        d["tiers"] = tuple(Tier(**t) if isinstance(t, dict) else t for t in d.get("tiers", ()))
        for k in ("targets", "client_memory_mb", "region"):
            if isinstance(d.get(k), list):
                d[k] = tuple(d[k])
        return cls(**d)

    @classmethod
    def from_run_config(cls, rc: dict[str, Any]) -> FedConfig:
        if "edgeweave" in rc:
            return cls.from_dict(json.loads(str(rc["edgeweave"])))
        raise ConfigError("run config lacks the 'edgeweave' key: build it with "
                          "FedConfig.to_run_config()")


def region_blocks(cfg: FedConfig, num_layers: int) -> tuple[int, ...]:
    """The blocks that carry adapters: ``cfg.region`` clipped to the model, else all."""
    start, end = cfg.region if cfg.region is not None else (0, num_layers)
    return tuple(range(start, min(end, num_layers)))


def global_lora(cfg: FedConfig, region: tuple[int, ...]) -> LoRAConfig:
    """The global adapter's LoRA config: the largest tier's rank on every region block."""
    return LoRAConfig(rank=cfg.max_rank, alpha=cfg.scale * cfg.max_rank,
                      target_modules=cfg.targets, layers=region, init_seed=cfg.seed)
