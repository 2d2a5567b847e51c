"""Fleet files (YAML): devices with their class, battery and artifacts; links; entry/exit.

```yaml
name: home
entry: hub            # where requests arrive
exit: hub             # where tokens must be delivered
artifacts:            # optional: variant name -> compression artifact folder (manifest.json)
  int4-gptq: ~/.cache/edgeweave/artifacts/smollm2-int4-gptq
policy:               # optional: prompts and tokens stay at home (hidden states may leave)
  keep_in: home
  hidden_states: false
devices:
  hub:     {class: rpi4-4gb, battery: 0.8, artifacts: [int8, int4], zone: home}
  gateway: {class: minipc-n100, zone: home}
  cloud:   {class: cloud-a100-80gb, zone: cloud, price_per_mtok: 0.15}
links:                # undirected; `up` rates apply from the first to the second device
  - [hub, gateway, wifi5]
  - {a: gateway, b: edge, class: ethernet, bandwidth_scale: 0.5}
```
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from edgeweave.errors import ConfigError
from edgeweave.profile import catalog
from edgeweave.profile.variants import Variant, load_variants
from edgeweave.types import NO_POLICY, DeviceProfile, Fleet, FleetDevice, Link, Policy
from edgeweave.validate import is_int, kind, number, one_line, refuse_unknown, show

# libyaml's safe loader when PyYAML was built with it: the pure-Python one takes 4 s to read
# a 10,000-device fleet file, the C one a tenth of that
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TOP_KEYS = ("name", "entry", "exit", "artifacts", "devices", "links", "policy")
_DEVICE_KEYS = ("class", "battery", "artifacts", "memory_pressure", "zone", "price_per_mtok")
_POLICY_KEYS = ("keep_in", "hidden_states", "max_cost_per_mtok")
_LINK_KEYS = ("a", "b", "class", "bandwidth_scale")


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


def _ident(value: Any, what: str) -> str:
    """A device id, end or fleet name: YAML gives strings, or integers when left unquoted."""
    if isinstance(value, bool):
        raise ConfigError(f"{what} is the boolean {str(value).lower()}: YAML reads unquoted "
                          "yes/no/on/off/true/false as booleans; quote the name, e.g. 'on'")
    if is_int(value) or isinstance(value, str) and value.strip():
        return str(value)
    raise ConfigError(f"{what} must be a name (a non-empty string), got {kind(value)} "
                      f"{show(value)}")


def _class_name(value: Any, what: str, known: list[str]) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a class name (a string), got {kind(value)} "
                          f"{show(value)}; known classes: {', '.join(sorted(known))}")
    return value


def _device(did: str, d: Any, extra: dict[str, DeviceProfile], where: str) -> FleetDevice:
    who = f"{where}: device {did!r}"
    if isinstance(d, str):
        d = {"class": d}
    if not isinstance(d, dict) or "class" not in d:
        raise ConfigError(f"{who} needs a `class` (one of {', '.join(sorted(catalog.devices()))}),"
                          f" e.g. `{did}: {{class: rpi5-8gb, battery: 0.8}}`; got {kind(d)} "
                          f"{show(d)}")
    refuse_unknown(d, _DEVICE_KEYS, who)
    cls = _class_name(d["class"], f"{who}: class", [*catalog.devices(), *extra])
    try:
        prof = catalog.device(cls, extra)
    except ConfigError as e:
        raise ConfigError(f"{who}: {e}") from e
    battery = d.get("battery")
    if battery is not None:
        battery = number(battery, f"{who}: battery", "`battery: 0.8` (the charge left, 0..1; "
                         "leave it out for a device on mains)")
    arts = d.get("artifacts")
    if arts is not None and not (isinstance(arts, list)
                                 and all(isinstance(a, str) for a in arts)):
        raise ConfigError(f"{who}: artifacts must be a list of variant names, e.g. "
                          f"`artifacts: [int8, int4]`, got {kind(arts)} {show(arts)}")
    pressure = number(d.get("memory_pressure", 0.0), f"{who}: memory_pressure",
                      "`memory_pressure: 0.3` (the fraction of memory other programs use)")
    zone = None if d.get("zone") is None else _ident(d["zone"], f"{who}: zone")
    price = number(d.get("price_per_mtok", 0.0), f"{who}: price_per_mtok",
                   "`price_per_mtok: 0.2` (what the whole model costs here per million tokens)")
    try:
        return FleetDevice(id=did, profile=prof, battery=battery,
                           artifacts=None if arts is None else tuple(arts),
                           memory_pressure=pressure, zone=zone, price_per_mtok=price)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e


def _link(item: Any, where: str) -> Link:
    shape = ("a link is [a, b, class], e.g. [hub, gateway, wifi5], or "
             "{a: hub, b: gateway, class: wifi5, bandwidth_scale: 0.5}")
    if isinstance(item, list):
        if len(item) != 3:
            raise ConfigError(f"{where}: link {show(item)} has {len(item)} items: {shape}")
        a, b, cls = item
        scale = 1.0
    elif isinstance(item, dict):
        refuse_unknown(item, _LINK_KEYS, f"{where}: link {show(item)}")
        missing = [k for k in ("a", "b", "class") if k not in item]
        if missing:
            raise ConfigError(f"{where}: link {show(item)} misses {', '.join(missing)}: {shape}")
        a, b, cls = item["a"], item["b"], item["class"]
        scale = number(item.get("bandwidth_scale", 1.0), f"{where}: link {a}-{b}: "
                       "bandwidth_scale", "`bandwidth_scale: 0.5` (measured / nominal rate)")
    else:
        raise ConfigError(f"{where}: {shape}; got {kind(item)} {show(item)}")
    a, b = _ident(a, f"{where}: a link end"), _ident(b, f"{where}: a link end")
    cls = _class_name(cls, f"{where}: link {a}-{b}: class", list(catalog.links()))
    try:
        return Link(a, b, catalog.link(cls), scale)
    except ConfigError as e:
        raise ConfigError(f"{where}: link {a}-{b}: {e}") from e


def _artifact_paths(arts: Any, where: str) -> list[Path]:
    example = "`artifacts: {int4-gptq: ~/.cache/edgeweave/artifacts/smollm2-int4-gptq}`"
    if arts is None:
        return []
    if not isinstance(arts, dict):
        raise ConfigError(f"{where}: artifacts must be a mapping of variant name -> artifact "
                          f"folder, e.g. {example}; got {kind(arts)} {show(arts)}")
    paths = []
    for name, p in arts.items():
        if not isinstance(p, str) or not p.strip():
            raise ConfigError(f"{where}: artifact {show(name)} must be a folder path (a "
                              f"string), got {kind(p)} {show(p)}; e.g. {example}")
        try:
            paths.append(Path(p).expanduser())
        except RuntimeError as e:  # "~someone" whose home directory is unknown
            raise ConfigError(f"{where}: artifact {show(name)}: cannot expand {p!r} ({e}): "
                              "write the folder's full path") from e
    return paths


def policy_from_dict(doc: Any, where: str) -> Policy:
    """``policy: {keep_in: home, hidden_states: false, max_cost_per_mtok: 0.5}``."""
    if doc is None:
        return NO_POLICY
    example = "`policy: {keep_in: home, hidden_states: false}`"
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: policy must be a mapping, e.g. {example}; got {kind(doc)} "
                          f"{show(doc)}")
    refuse_unknown(doc, _POLICY_KEYS, f"{where}: policy")
    keep = None if doc.get("keep_in") is None else _ident(doc["keep_in"], f"{where}: policy "
                                                                           "keep_in")
    cost = doc.get("max_cost_per_mtok")
    if cost is not None:
        cost = number(cost, f"{where}: policy max_cost_per_mtok", "`max_cost_per_mtok: 0.5`")
    try:
        return Policy(keep, doc.get("hidden_states", False), cost)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e


def with_policy(fleet: Fleet, keep_in: str | None = None, hidden_states: bool | None = None,
                max_cost: float | None = None) -> Fleet:
    """``fleet`` with the command line's policy options on top of its file's (None keeps the
    file's value): what ``edgeweave plan`` and ``edgeweave serve --fleet-file`` plan with."""
    p = fleet.policy
    return replace(fleet, policy=Policy(
        keep_in if keep_in is not None else p.keep_in,
        p.hidden_states if hidden_states is None else hidden_states,
        max_cost if max_cost is not None else p.max_cost_per_mtok))


def fleet_from_dict(doc: dict[str, Any], where: str = "fleet",
                    extra: dict[str, DeviceProfile] | None = None) -> FleetSpec:
    """Build and validate a fleet; ``extra`` adds device classes (e.g. the probed host)."""
    needs = "a fleet needs a non-empty `devices` mapping (see examples/fleets/home.yaml)"
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: {needs}; the file holds {kind(doc)}, not a mapping")
    refuse_unknown(doc, _TOP_KEYS, where)
    if not isinstance(doc.get("devices"), dict) or not doc["devices"]:
        raise ConfigError(f"{where}: {needs}")
    raw = {_ident(k, f"{where}: device name {show(k)}"): v for k, v in doc["devices"].items()}
    extra = dict(extra or {})
    classes = [d if isinstance(d, str) else d.get("class") if isinstance(d, dict) else None
               for d in raw.values()]
    if "host" in classes and "host" not in extra:
        from edgeweave.profile.probe import load_cached

        hp = load_cached()
        if hp is None:
            raise ConfigError(f"{where}: device class 'host' needs a host profile: run "
                              "`edgeweave profile` first")
        extra["host"] = hp.device()
    devices = tuple(_device(k, v, extra, where) for k, v in raw.items())
    link_items = doc.get("links")
    if link_items is None:
        link_items = []
    if not isinstance(link_items, list):
        raise ConfigError(f"{where}: links must be a list, e.g. `links: [[hub, gateway, wifi5]]`;"
                          f" got {kind(link_items)} {show(link_items)}")
    links = tuple(_link(x, where) for x in link_items)
    first = devices[0].id
    name = Path(where).stem if doc.get("name") is None else _ident(doc["name"], f"{where}: name")
    entry = first if doc.get("entry") is None else _ident(doc["entry"], f"{where}: entry")
    exit_ = entry if doc.get("exit") is None else _ident(doc["exit"], f"{where}: exit")
    fleet = Fleet(name=name, devices=devices, links=links, entry=entry, exit=exit_,
                  policy=policy_from_dict(doc.get("policy"), where))
    check_connected(fleet, where)
    variants = load_variants(_artifact_paths(doc.get("artifacts"), where))
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
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read fleet file {path}: {e}") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not a text file (byte {data[e.start]:#04x} at offset "
                          f"{e.start} is not UTF-8): pass a YAML fleet file like "
                          "examples/fleets/home.yaml") from e
    try:
        doc = yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({one_line(e)}): fix the syntax, see "
                          "examples/fleets/home.yaml") from e
    return fleet_from_dict(doc, str(path), extra)
