"""Announcements in, a :class:`~edgeweave.types.Fleet` out: the planner's view of the nodes
that found each other. Pure (no broker, no network), so it is tested without hardware.

* each announced node is a device: its catalog class or its measured figures, the variants
  it runs (``artifacts``), battery and zone;
* two nodes are joined by a link measured by their gRPC pings (``rtt_s``, ``up_bps`` one way
  each; the other direction from the peer's own measurement, or the same figures), else by
  the ``default_link`` class (nodes of one fleet are assumed to reach each other);
* an optional fleet file (:class:`Overlay`, the fleet-file format with every key optional)
  names the fleet, its entry/exit and policy, replaces a device's class, zone, battery,
  price or artifacts (a device pinned to a class plans as that class whatever it measured),
  lists links that replace measured ones, and adds artifact variants.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeweave.control.announce import Announcement
from edgeweave.errors import ConfigError
from edgeweave.types import NO_POLICY, Fleet, FleetDevice, Link, LinkProfile, Policy
from edgeweave.validate import kind, number, refuse_unknown, show

_TOP_KEYS = ("name", "entry", "exit", "artifacts", "devices", "links", "policy")
_DEVICE_KEYS = ("class", "battery", "artifacts", "memory_pressure", "zone", "price_per_mtok")
DEFAULT_LINK = "wifi5"  # conservative for a LAN that was not measured (400 Mbit/s, 2 ms)


@dataclass(frozen=True)
class Overlay:
    """What a fleet file adds to the announcements (every part optional)."""

    name: str | None = None
    entry: str | None = None
    exit: str | None = None
    policy: Policy = NO_POLICY
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    links: tuple[Link, ...] = ()
    variants: dict[str, Any] = field(default_factory=dict)  # artifact variants by name


@dataclass(frozen=True)
class DiscoveredFleet:
    fleet: Fleet
    variants: dict[str, Any]  # edgeweave.variants.Variant by name: what the nodes can run
    notes: tuple[str, ...] = ()


def overlay_from_dict(doc: Any, where: str = "fleet file") -> Overlay:
    from edgeweave.plan.fleet import _artifact_paths, _ident, _link, policy_from_dict
    from edgeweave.profile.variants import load_variants

    if doc is None:
        return Overlay()
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: a fleet file is a mapping (see examples/fleets/home.yaml)"
                          f"; it holds {kind(doc)}")
    refuse_unknown(doc, _TOP_KEYS, where)
    devices: dict[str, dict[str, Any]] = {}
    raw = doc.get("devices") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: devices must be a mapping of device name -> settings, "
                          f"e.g. `node0: {{zone: home}}`; got {kind(raw)} {show(raw)}")
    for k, v in raw.items():
        did = _ident(k, f"{where}: device name {show(k)}")
        v = {"class": v} if isinstance(v, str) else v
        if not isinstance(v, dict):
            raise ConfigError(f"{where}: device {did!r} must be a mapping, e.g. "
                              f"`{did}: {{class: rpi5-8gb, zone: home}}`; got {kind(v)}")
        refuse_unknown(v, _DEVICE_KEYS, f"{where}: device {did!r}")
        for key, example in (("battery", "`battery: 0.8`"), ("price_per_mtok", "`0.2`"),
                             ("memory_pressure", "`memory_pressure: 0.3`")):
            if v.get(key) is not None:
                number(v[key], f"{where}: device {did!r}: {key}", example)
        devices[did] = dict(v)
    links = doc.get("links") or []
    if not isinstance(links, list):
        raise ConfigError(f"{where}: links must be a list, e.g. `links: [[a, b, ethernet]]`")
    return Overlay(
        name=None if doc.get("name") is None else _ident(doc["name"], f"{where}: name"),
        entry=None if doc.get("entry") is None else _ident(doc["entry"], f"{where}: entry"),
        exit=None if doc.get("exit") is None else _ident(doc["exit"], f"{where}: exit"),
        policy=policy_from_dict(doc.get("policy"), where), devices=devices,
        links=tuple(_link(x, where) for x in links),
        variants={n: v for n, v in load_variants(_artifact_paths(doc.get("artifacts"),
                                                                 where)).items()
                  if v.source != "default"})


def read_overlay(path: str | Path) -> Overlay:
    import yaml

    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read the fleet file {p}: {e}; see examples/fleets/home.yaml"
                          ) from e
    return overlay_from_dict(doc, str(p))


def measured_link(a: str, b: str, ab: Mapping[str, Any] | None, ba: Mapping[str, Any] | None,
                  energy_per_byte_j: float) -> Link | None:
    """A link from ping measurements: ``ab`` is what ``a`` measured towards ``b``."""
    def rate(m: Mapping[str, Any] | None) -> float | None:
        v = None if m is None else m.get("up_bps")
        return float(v) if isinstance(v, int | float) and v > 0 else None

    def rtt(m: Mapping[str, Any] | None) -> float | None:
        v = None if m is None else m.get("rtt_s")
        return float(v) if isinstance(v, int | float) and v > 0 else None

    up, down = rate(ab), rate(ba)
    rtts = [r for r in (rtt(ab), rtt(ba)) if r is not None]
    if (up is None and down is None) or not rtts:
        return None
    up, down = up or down, down or up
    prof = LinkProfile(name=f"measured {a}-{b}", up_bps=float(up), down_bps=float(down),
                       latency_s=min(rtts) / 2, energy_per_byte_j=energy_per_byte_j,
                       description="measured by gRPC pings between the nodes")
    return Link(a, b, prof)


def fleet_from_announcements(announcements: Sequence[Announcement],
                             measurements: Mapping[str, Mapping[str, Mapping[str, Any]]]
                             | None = None, overlay: Overlay | None = None, *,
                             name: str = "default",
                             default_link: str = DEFAULT_LINK,
                             online: Collection[str] | None = None) -> DiscoveredFleet:
    """The fleet of ``announcements``; ``measurements[a][b]`` is what node ``a`` measured
    towards ``b`` (``{"rtt_s", "up_bps"}``). The entry and exit are the fleet file's, else
    the first device by name; ``online`` (when given) keeps them off departed nodes: the
    server is where requests really arrive, so any live node may stand for it."""
    from edgeweave.profile import catalog
    from edgeweave.variants import get as get_variant

    if not announcements:
        raise ConfigError("no node has announced itself: start `edgeweave node --mqtt "
                          "HOST:PORT` on each device (same --fleet as the server)")
    ov = overlay or Overlay()
    meas = measurements or {}
    notes: list[str] = []
    anns = sorted(announcements, key=lambda a: a.device)
    ids = [a.device for a in anns]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"two announcements share a device name: {ids}; give every node "
                          "its own --name")
    variants: dict[str, Any] = dict(ov.variants)
    devices = []
    for a in anns:
        o = ov.devices.get(a.device, {})
        prof = catalog.device(o["class"]) if o.get("class") else a.profile()
        arts = tuple(o["artifacts"]) if o.get("artifacts") is not None else a.variants
        for v in arts:
            if v not in variants:
                variants[v] = get_variant(v)  # an unknown name raises with the choices
        battery = o.get("battery", a.battery)
        zone = o.get("zone", a.zone)
        devices.append(FleetDevice(
            id=a.device, profile=prof, battery=None if battery is None else float(battery),
            artifacts=arts, memory_pressure=float(o.get("memory_pressure", 0.0)),
            zone=None if zone is None else str(zone),
            price_per_mtok=float(o.get("price_per_mtok", 0.0))))
    unknown = sorted(set(ov.devices) - set(ids))
    if unknown:
        notes.append(f"fleet file devices not announced (yet): {', '.join(unknown)}")
    fallback = catalog.link(default_link)
    given = {frozenset((ln.a, ln.b)): ln for ln in ov.links if ln.a in ids and ln.b in ids}
    links: list[Link] = []
    defaulted = 0
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            pair = frozenset((a, b))
            ln = given.get(pair) or measured_link(a, b, meas.get(a, {}).get(b),
                                                  meas.get(b, {}).get(a),
                                                  fallback.energy_per_byte_j)
            if ln is None:
                ln, defaulted = Link(a, b, fallback), defaulted + 1
            links.append(ln)
    if defaulted:
        notes.append(f"{defaulted} link(s) not measured yet: priced as {default_link}")
    live = [d for d in ids if online is None or d in online] or ids
    entry = ov.entry if ov.entry in live else live[0]
    exit_ = ov.exit if ov.exit in live else entry
    if ov.entry is not None and ov.entry != entry:
        notes.append(f"entry {ov.entry!r} is not online: requests enter at {entry}")
    fleet = Fleet(name=ov.name or name, devices=tuple(devices), links=tuple(links),
                  entry=entry, exit=exit_, policy=ov.policy)
    return DiscoveredFleet(fleet, variants, tuple(notes))
