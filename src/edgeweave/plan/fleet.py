"""Fleet files (YAML): devices with their class, battery and artifacts; links; entry/exit.

```yaml
name: home
entry: hub            # where requests arrive
exit: hub             # where tokens must be delivered
artifacts:            # optional: variant name -> compression artifact folder (manifest.json)
  int4-gptq: ~/.cache/edgeweave/artifacts/smollm2-int4-gptq
devices:
  hub:     {class: rpi4-4gb, battery: 0.8, artifacts: [int8, int4]}
  gateway: {class: minipc-n100}
links:                # undirected; `up` rates apply from the first to the second device
  - [hub, gateway, wifi5]
  - {a: gateway, b: edge, class: ethernet, bandwidth_scale: 0.5}
```
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edgeweave.errors import ConfigError
from edgeweave.profile import catalog
from edgeweave.profile.variants import Variant, load_variants
from edgeweave.types import DeviceProfile, Fleet, FleetDevice, Link

_DEVICE_KEYS = {"class", "battery", "artifacts", "memory_pressure"}


@dataclass(frozen=True)
class FleetSpec:
    fleet: Fleet
    variants: dict[str, Variant]


def reachable(fleet: Fleet, start: str) -> set[str]:
    adj: dict[str, set[str]] = {d: set() for d in fleet.ids}
    for ln in fleet.links:
        adj[ln.a].add(ln.b)
        adj[ln.b].add(ln.a)
    seen, todo = {start}, deque([start])
    while todo:
        for nxt in adj[todo.popleft()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def check_connected(fleet: Fleet, where: str) -> None:
    cut = sorted(set(fleet.ids) - reachable(fleet, fleet.entry))
    if cut:
        raise ConfigError(
            f"{where}: the fleet graph is disconnected: {', '.join(cut)} cannot reach the entry "
            f"{fleet.entry!r}; add a link from each of them to a connected device")


def _device(did: str, d: Any, extra: dict[str, DeviceProfile], where: str) -> FleetDevice:
    if isinstance(d, str):
        d = {"class": d}
    if not isinstance(d, dict) or "class" not in d:
        raise ConfigError(f"{where}: device {did!r} needs a `class` (one of "
                          f"{', '.join(sorted(catalog.devices()))})")
    unknown = set(d) - _DEVICE_KEYS
    if unknown:
        raise ConfigError(f"{where}: device {did!r} has unknown keys {sorted(unknown)}; "
                          f"allowed: {sorted(_DEVICE_KEYS)}")
    try:
        prof = catalog.device(str(d["class"]), extra)
    except ConfigError as e:
        raise ConfigError(f"{where}: device {did!r}: {e}") from e
    arts = d.get("artifacts")
    return FleetDevice(id=str(did), profile=prof,
                       battery=None if d.get("battery") is None else float(d["battery"]),
                       artifacts=None if arts is None else tuple(str(a) for a in arts),
                       memory_pressure=float(d.get("memory_pressure", 0.0)))


def _link(item: Any, where: str) -> Link:
    if isinstance(item, list | tuple) and len(item) == 3:
        a, b, cls, scale = *item, 1.0
    elif isinstance(item, dict):
        try:
            a, b, cls = item["a"], item["b"], item["class"]
        except KeyError as e:
            raise ConfigError(f"{where}: link {item} misses {e.args[0]!r}") from e
        scale = float(item.get("bandwidth_scale", 1.0))
    else:
        raise ConfigError(f"{where}: a link is [a, b, class] or {{a, b, class}}, got {item!r}")
    try:
        return Link(str(a), str(b), catalog.link(str(cls)), scale)
    except ConfigError as e:
        raise ConfigError(f"{where}: link {a}-{b}: {e}") from e


def fleet_from_dict(doc: dict[str, Any], where: str = "fleet",
                    extra: dict[str, DeviceProfile] | None = None) -> FleetSpec:
    """Build and validate a fleet; ``extra`` adds device classes (e.g. the probed host)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("devices"), dict) or not doc["devices"]:
        raise ConfigError(f"{where}: a fleet needs a non-empty `devices` mapping")
    extra = dict(extra or {})
    if any((d if isinstance(d, str) else (d or {}).get("class")) == "host"
           for d in doc["devices"].values()) and "host" not in extra:
        from edgeweave.profile.probe import load_cached

        hp = load_cached()
        if hp is None:
            raise ConfigError(f"{where}: device class 'host' needs a host profile: run "
                              "`edgeweave profile` first")
        extra["host"] = hp.device()
    devices = tuple(_device(k, v, extra, where) for k, v in doc["devices"].items())
    links = tuple(_link(x, where) for x in doc.get("links") or [])
    first = devices[0].id
    fleet = Fleet(name=str(doc.get("name", Path(where).stem)), devices=devices, links=links,
                  entry=str(doc.get("entry", first)),
                  exit=str(doc.get("exit", doc.get("entry", first))))
    check_connected(fleet, where)
    arts = doc.get("artifacts") or {}
    variants = load_variants([Path(str(p)).expanduser() for p in arts.values()])
    known = set(variants)
    for d in devices:
        bad = sorted(set(d.artifacts or ()) - known)
        if bad:
            raise ConfigError(f"{where}: device {d.id!r} lists unknown artifacts {bad}; known "
                              f"variants: {', '.join(sorted(known))}")
    return FleetSpec(fleet, variants)


def load_fleet(path: str | Path, extra: dict[str, DeviceProfile] | None = None) -> FleetSpec:
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read fleet file {path}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    return fleet_from_dict(doc, str(path), extra)
