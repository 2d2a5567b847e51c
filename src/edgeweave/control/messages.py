"""Topic layout and payloads of the control plane (schema version 1, JSON, UTF-8).

Under ``edgeweave/<fleet>/node/<device>/``:

- ``profile`` (retained, QoS 1): ``{"v", "device", "profile": {...}, "heartbeat_s", "ts"}``
- ``status`` (retained, QoS 1, also the last will):
  ``{"v", "device", "state": "online" | "offline", "reason", "ts"}``
- ``heartbeat`` (QoS 0): ``{"v", "device", "seq", "ts"}``
- ``telemetry`` (QoS 1):
  ``{"v", "device", "battery", "charging", "free_memory_mb", "link_quality", "ts"}``
- ``links`` (retained, QoS 1): what the node measured to the peers it sees,
  ``{"v", "device", "peers": {peer: {"rtt_s", "up_bps", "pings"}}, "ts"}``

The profile of a node that assembles a fleet (``control.announce``) carries its gRPC
``address``, a device ``class`` from the catalog or its ``measured`` figures, ``variants``,
``battery``, ``zone`` and, with TLS, its fleet certificate (``cert_pem``, ``cert_sha256``).
A server publishes what it serves under ``edgeweave/<fleet>/server/status`` (retained):
members, measurements, the live plan and its predicted cost (``edgeweave fleet status``).

Retained profile and status let a monitor that starts late learn the fleet at once; the
last will (a retained ``offline``/``lost`` status) is published by the broker when a node's
connection dies without a clean disconnect.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any

from edgeweave.errors import ConfigError

SCHEMA_VERSION = 1
KINDS = ("profile", "status", "heartbeat", "telemetry", "links")


def check_name(what: str, name: str) -> str:
    if not name or any(c in name for c in "/+#") or name != name.strip():
        raise ConfigError(f"{what} {name!r} cannot be used in MQTT topics: use a non-empty "
                          "name without '/', '+', '#' or surrounding spaces")
    return name


def topic(fleet: str, device: str, kind: str) -> str:
    if kind not in KINDS:
        raise ConfigError(f"unknown control message kind {kind!r}: one of {', '.join(KINDS)}")
    return f"edgeweave/{check_name('fleet', fleet)}/node/{check_name('device', device)}/{kind}"


def subscription(fleet: str) -> str:
    return f"edgeweave/{check_name('fleet', fleet)}/node/+/+"


def server_topic(fleet: str) -> str:
    """Where a server publishes its fleet status (retained); outside the nodes' subtree."""
    return f"edgeweave/{check_name('fleet', fleet)}/server/status"


def parse_topic(t: str) -> tuple[str, str, str] | None:
    """``(fleet, device, kind)`` of a control topic, or None for anything else."""
    parts = t.split("/")
    if len(parts) != 5 or parts[0] != "edgeweave" or parts[2] != "node" or parts[4] not in KINDS:
        return None
    return parts[1], parts[3], parts[4]


def encode(device: str, **fields: Any) -> bytes:
    return json.dumps({"v": SCHEMA_VERSION, "device": device, "ts": time.time(), **fields},
                      separators=(",", ":"), default=_jsonable).encode()


def decode(payload: bytes) -> dict[str, Any] | None:
    """A payload of a version we understand, or None (ignored, never crashes the monitor)."""
    try:
        msg = json.loads(payload.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(msg, dict) or msg.get("v") != SCHEMA_VERSION:
        return None
    return msg


def profile_dict(profile: Any) -> dict[str, Any]:
    if profile is None:
        return {}
    if isinstance(profile, dict):
        return dict(profile)
    if is_dataclass(profile) and not isinstance(profile, type):
        return asdict(profile)
    raise ConfigError(f"a node profile must be a dict or a dataclass, not {type(profile)}")


@dataclass(frozen=True)
class Telemetry:
    """One reading of a node. ``battery`` in [0, 1] (None: mains powered), ``link_quality``
    in [0, 1] (None: unknown)."""

    free_memory_mb: float
    battery: float | None = None
    charging: bool = False
    link_quality: float | None = None

    def __post_init__(self) -> None:
        for name in ("battery", "link_quality"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ConfigError(f"telemetry {name} must be in [0, 1] (got {v})")
        if self.free_memory_mb < 0:
            raise ConfigError(f"free_memory_mb must be >= 0 (got {self.free_memory_mb})")

    @classmethod
    def from_msg(cls, msg: dict[str, Any]) -> Telemetry | None:
        try:
            return cls(free_memory_mb=float(msg["free_memory_mb"]),
                       battery=None if msg.get("battery") is None else float(msg["battery"]),
                       charging=bool(msg.get("charging", False)),
                       link_quality=None if msg.get("link_quality") is None
                       else float(msg["link_quality"]))
        except (KeyError, TypeError, ValueError, ConfigError):
            return None

    @classmethod
    def sample(cls) -> Telemetry:
        """This host's reading (psutil); battery None where the host has none."""
        import psutil

        bat = psutil.sensors_battery() if hasattr(psutil, "sensors_battery") else None
        return cls(free_memory_mb=psutil.virtual_memory().available / 2**20,
                   battery=None if bat is None else bat.percent / 100,
                   charging=bool(bat and bat.power_plugged))


def _jsonable(o: Any) -> Any:
    if is_dataclass(o) and not isinstance(o, type):
        return asdict(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)
