"""Frozen shared contracts used across packages.

Layer ranges are half-open: a ``Shard(start=0, end=10)`` holds blocks 0..9. The embedding
belongs to the stage whose shard starts at 0 and the head to the stage whose shard ends at
``n_layers``; a plan's stages cover ``[0, n_layers)`` exactly, in order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, NewType

from edgeweave.errors import ConfigError

Bytes = NewType("Bytes", int)
Seconds = NewType("Seconds", float)
Joules = NewType("Joules", float)
DeviceId = NewType("DeviceId", str)

CODECS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Shard:
    """Half-open block range ``[start, end)`` of a model with ``n_layers`` blocks."""

    start: int
    end: int
    n_layers: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end <= self.n_layers:
            raise ConfigError(
                f"invalid shard [{self.start}, {self.end}) of a {self.n_layers}-block model: "
                f"need 0 <= start < end <= {self.n_layers}"
            )

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def is_first(self) -> bool:
        return self.start == 0

    @property
    def is_last(self) -> bool:
        return self.end == self.n_layers

    def __contains__(self, layer: int) -> bool:
        return self.start <= layer < self.end

    def __str__(self) -> str:
        return f"[{self.start}, {self.end})"


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: a device runs ``shard`` of ``variant``; its output hidden
    states leave encoded with ``codec`` (one of :data:`CODECS`)."""

    device: str
    shard: Shard
    variant: str = "fp32"
    codec: str = "fp32"

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ConfigError(f"unknown codec {self.codec!r}: choose one of {', '.join(CODECS)}")


@dataclass(frozen=True)
class Plan:
    """Ordered stages covering ``[0, n_layers)`` plus the cost breakdown that chose them."""

    stages: tuple[Stage, ...]
    objective: str = "latency"
    predicted: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.stages:
            raise ConfigError("a plan needs at least one stage")
        n = self.stages[0].shard.n_layers
        pos = 0
        for s in self.stages:
            if s.shard.n_layers != n or s.shard.start != pos:
                raise ConfigError(
                    f"plan stages must tile [0, {n}) in order; stage on {s.device} has {s.shard}"
                    f" but the previous stage ended at {pos}"
                )
            pos = s.shard.end
        if pos != n:
            raise ConfigError(f"plan stages end at {pos}, not at the model's {n} blocks")

    @property
    def n_layers(self) -> int:
        return self.stages[0].shard.n_layers

    @classmethod
    def single(cls, n_layers: int, device: str = "local", variant: str = "fp32") -> Plan:
        return cls(stages=(Stage(device, Shard(0, n_layers, n_layers), variant),))

    @classmethod
    def split(cls, n_layers: int, cuts: list[int], devices: list[str] | None = None,
              variant: str = "fp32", codec: str = "fp32") -> Plan:
        """Plan from cut points, e.g. ``cuts=[10, 20]`` on 30 blocks gives three stages."""
        bounds = [0, *cuts, n_layers]
        names = devices or [f"node{i}" for i in range(len(bounds) - 1)]
        stages = tuple(
            Stage(names[i], Shard(bounds[i], bounds[i + 1], n_layers), variant, codec)
            for i in range(len(bounds) - 1)
        )
        return cls(stages=stages)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        stages = tuple(
            Stage(s["device"], Shard(**s["shard"]), s.get("variant", "fp32"), s.get("codec", "fp32"))
            for s in d["stages"]
        )
        return cls(stages=stages, objective=d.get("objective", "latency"),
                   predicted=dict(d.get("predicted", {})), notes=tuple(d.get("notes", ())))
