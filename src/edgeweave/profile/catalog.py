"""Device and link classes from ``catalog/*.yaml`` (sourced figures), validated on load.

Units in the YAML are human ones (GB, GB/s, GOPS, Mbit/s, ms, nJ/byte); the frozen
:class:`~edgeweave.types.DeviceProfile` / :class:`~edgeweave.types.LinkProfile` carry SI units.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from edgeweave.errors import ConfigError
from edgeweave.types import DeviceProfile, LinkProfile

CATALOG_DIR = Path(__file__).parent / "catalog"

_DEVICE_KEYS = {"tier", "description", "memory_gb", "mem_bw_gbs", "compute_gops", "power_w",
                "battery_wh", "op_overhead_us", "providers"}

# ONNX Runtime execution providers by family, best first; CPU is always the fallback. A
# device class names its family (`providers:` in devices.yaml), so a new class is one entry.
ONNX_PROVIDERS: dict[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "arm-cpu": ("XnnpackExecutionProvider", "CPUExecutionProvider"),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "jetson": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    "npu-qualcomm": ("QNNExecutionProvider", "CPUExecutionProvider"),
    "apple": ("CoreMLExecutionProvider", "CPUExecutionProvider"),
    "intel": ("OpenVINOExecutionProvider", "CPUExecutionProvider"),
    "windows-gpu": ("DmlExecutionProvider", "CPUExecutionProvider"),
}
_LINK_KEYS = {"description", "up_mbps", "down_mbps", "latency_ms", "energy_nj_per_byte"}


def _read(path: Path, key: str) -> dict[str, dict[str, Any]]:
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get(key), dict):
        raise ConfigError(f"{path}: expected a top-level mapping {key!r}")
    return doc[key]


def device_from_dict(name: str, d: dict[str, Any], where: str = "catalog") -> DeviceProfile:
    unknown = set(d) - _DEVICE_KEYS
    if unknown:
        raise ConfigError(f"{where}: device class {name!r} has unknown keys {sorted(unknown)}; "
                          f"allowed: {sorted(_DEVICE_KEYS)}")
    providers = d.get("providers", "cpu")
    if providers not in ONNX_PROVIDERS:
        raise ConfigError(f"{where}: device class {name!r}: providers {providers!r} is not a "
                          f"provider family; choose one of {', '.join(ONNX_PROVIDERS)}")
    try:
        power = d.get("power_w") or {}
        return DeviceProfile(
            name=name, tier=str(d["tier"]), memory=int(float(d["memory_gb"]) * 1e9),
            mem_bw=float(d["mem_bw_gbs"]) * 1e9,
            compute={str(k): float(v) * 1e9 for k, v in dict(d["compute_gops"]).items()},
            power_idle_w=float(power.get("idle", 1.0)),
            power_active_w=float(power.get("active", 5.0)),
            battery_wh=None if d.get("battery_wh") is None else float(d["battery_wh"]),
            op_overhead_s=float(d.get("op_overhead_us", 5.0)) * 1e-6,
            description=str(d.get("description", "")),
            providers=providers,
        )
    except KeyError as e:
        raise ConfigError(f"{where}: device class {name!r} misses {e.args[0]!r}") from e
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: device class {name!r}: {e}") from e


def link_from_dict(name: str, d: dict[str, Any], where: str = "catalog") -> LinkProfile:
    unknown = set(d) - _LINK_KEYS
    if unknown:
        raise ConfigError(f"{where}: link class {name!r} has unknown keys {sorted(unknown)}; "
                          f"allowed: {sorted(_LINK_KEYS)}")
    try:
        return LinkProfile(
            name=name, up_bps=float(d["up_mbps"]) * 1e6, down_bps=float(d["down_mbps"]) * 1e6,
            latency_s=float(d["latency_ms"]) * 1e-3,
            energy_per_byte_j=float(d.get("energy_nj_per_byte", 0.0)) * 1e-9,
            description=str(d.get("description", "")),
        )
    except KeyError as e:
        raise ConfigError(f"{where}: link class {name!r} misses {e.args[0]!r}") from e
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: link class {name!r}: {e}") from e


@lru_cache(maxsize=1)
def devices() -> dict[str, DeviceProfile]:
    """All device classes of the bundled catalog, by name."""
    path = CATALOG_DIR / "devices.yaml"
    return {n: device_from_dict(n, d, str(path)) for n, d in _read(path, "devices").items()}


@lru_cache(maxsize=1)
def links() -> dict[str, LinkProfile]:
    path = CATALOG_DIR / "links.yaml"
    return {n: link_from_dict(n, d, str(path)) for n, d in _read(path, "links").items()}


def device(name: str, extra: dict[str, DeviceProfile] | None = None) -> DeviceProfile:
    """The device class ``name`` (``extra`` adds e.g. the probed ``host``)."""
    known = {**devices(), **(extra or {})}
    if name not in known:
        raise ConfigError(f"unknown device class {name!r}; known classes: "
                          f"{', '.join(sorted(known))} (or 'host' after `edgeweave profile`)")
    return known[name]


def link(name: str) -> LinkProfile:
    if name not in links():
        raise ConfigError(f"unknown link class {name!r}; known classes: "
                          f"{', '.join(sorted(links()))}")
    return links()[name]
