"""Fleet events and the thresholds that raise them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from edgeweave.errors import ConfigError


class EventKind(StrEnum):
    JOINED = "joined"  # first seen online
    READY = "ready"  # online and heard ``admit_heartbeats`` heartbeats since (re)joining
    GONE = "gone"  # last will, clean leave or missed heartbeats
    BACK = "back"  # online again after GONE
    BATTERY_LOW = "battery_low"
    BATTERY_OK = "battery_ok"
    MEMORY_PRESSURE = "memory_pressure"
    MEMORY_OK = "memory_ok"
    LINK_DEGRADED = "link_degraded"
    LINK_OK = "link_ok"


@dataclass(frozen=True)
class FleetEvent:
    kind: EventKind
    device: str
    detail: dict[str, Any] = field(default_factory=dict)  # reason, reading, ...
    at: float = field(default_factory=time.monotonic)  # monotonic seconds


@dataclass(frozen=True)
class MonitorConfig:
    """Thresholds with hysteresis: a condition fires once when crossed and re-arms only
    after the reading recovers past ``threshold + hysteresis`` (no flapping at the edge)."""

    battery_low: float = 0.20  # fraction of capacity, ignored while charging
    battery_hysteresis: float = 0.05
    memory_low_mb: float = 256.0
    memory_hysteresis_mb: float = 64.0
    link_low: float = 0.30
    link_hysteresis: float = 0.10
    heartbeat_misses: float = 3.0  # gone after this many heartbeat periods of silence
    default_heartbeat_s: float = 1.0  # for nodes whose profile does not say
    watchdog_period_s: float = 0.1
    # heartbeats after an announce before a node is READY: a retained profile of a node
    # that is long gone (no will reached the broker) never gets that far
    admit_heartbeats: int = 2
    version: int = 1

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.battery_low < 1, "battery_low must be in [0, 1)"),
            (0 <= self.link_low < 1, "link_low must be in [0, 1)"),
            (self.memory_low_mb >= 0, "memory_low_mb must be >= 0"),
            (min(self.battery_hysteresis, self.memory_hysteresis_mb,
                 self.link_hysteresis) >= 0, "hysteresis values must be >= 0"),
            (self.heartbeat_misses >= 1, "heartbeat_misses must be >= 1"),
            (self.default_heartbeat_s > 0 and self.watchdog_period_s > 0,
             "default_heartbeat_s and watchdog_period_s must be > 0"),
            (self.admit_heartbeats >= 0, "admit_heartbeats must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"invalid monitor config: {msg}")
