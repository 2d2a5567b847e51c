"""Runtime adaptation: fleet events in, a new plan out, without flapping.

``Adapter(fleet, model, objective).on_event(event) -> Decision(plan, changed, moved_layers,
reason)``. The serving and runtime code feed it MQTT telemetry as events:

* :class:`BatteryLevel` - a device leaves the plan below ``battery_low`` and comes back
  only above ``battery_high`` (two thresholds: a level hovering at one cannot flap);
* :class:`DeviceGone` / :class:`DeviceBack` - heartbeat lost / announced again;
* :class:`BandwidthChange` - a link's measured/nominal rate;
* :class:`MemoryPressure` - the fraction of a device's memory others now use;
* :class:`FleetChanged` - the fleet itself changed (a discovered node was admitted, its
  measurements moved): the adapter's base fleet becomes the new one, what it learnt from
  earlier events (departures, batteries, memory, link scales) is kept.

The current plan is kept while it stays feasible and within ``hysteresis`` (10 %) of the new
optimum. When it must change, the adapter prefers, among plans within ``hysteresis`` of the
optimum, the one that moves the fewest layers (the planner with a price per moved block).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from edgeweave.errors import ConfigError, EdgeweaveError, PlanningError
from edgeweave.plan import objectives as O
from edgeweave.plan.partition import place_tables, search, tables_for
from edgeweave.plan.tables import CostTables
from edgeweave.profile.cost import ModelCosts
from edgeweave.types import Fleet, Plan

if TYPE_CHECKING:  # importing edgeweave.models pulls in torch
    from edgeweave.models.config import ModelConfig


@dataclass(frozen=True)
class BatteryLevel:
    device: str
    level: float  # 0..1


@dataclass(frozen=True)
class DeviceGone:
    device: str


@dataclass(frozen=True)
class DeviceBack:
    device: str


@dataclass(frozen=True)
class BandwidthChange:
    a: str
    b: str
    scale: float  # measured / nominal rate of the link a-b


@dataclass(frozen=True)
class MemoryPressure:
    device: str
    fraction: float  # of the device's memory used by others, 0..1


@dataclass(frozen=True)
class FleetChanged:
    fleet: Fleet
    variants: dict[str, object] | None = None  # what the nodes can run now (None: as before)
    reason: str = "the fleet changed"


Event = (BatteryLevel | DeviceGone | DeviceBack | BandwidthChange | MemoryPressure
         | FleetChanged)


@dataclass(frozen=True)
class Decision:
    plan: Plan
    changed: bool
    moved_layers: int
    reason: str


@dataclass
class _State:
    gone: set[str] = field(default_factory=set)
    drained: set[str] = field(default_factory=set)
    battery: dict[str, float] = field(default_factory=dict)
    pressure: dict[str, float] = field(default_factory=dict)
    scale: dict[frozenset[str], float] = field(default_factory=dict)


_HANDLERS: dict[type, Callable[[Adapter, object], str]] = {}


def handles(kind: type) -> Callable[[Callable[[Adapter, object], str]], Callable[[Adapter, object], str]]:
    def deco(fn: Callable[[Adapter, object], str]) -> Callable[[Adapter, object], str]:
        _HANDLERS[kind] = fn
        return fn
    return deco


def moved_layers(old: Plan, new: Plan) -> int:
    """Blocks whose device or variant differs between two plans."""
    def where(p: Plan) -> list[tuple[str, str]]:
        return [(s.device, s.variant) for s in p.stages for _ in range(s.shard.size)]
    return sum(a != b for a, b in zip(where(old), where(new), strict=True))


class Adapter:
    def __init__(self, fleet: Fleet, model: ModelConfig | ModelCosts, objective: str = "latency",
                 *, hysteresis: float = 0.10, battery_low: float = 0.2, battery_high: float = 0.3,
                 plan: Plan | None = None, **place_kw: object) -> None:
        if not 0 <= battery_low <= battery_high <= 1:
            raise ConfigError("need 0 <= battery_low <= battery_high <= 1")
        O.get(objective)
        self.base, self.model, self.objective = fleet, model, objective
        self.hysteresis, self.low, self.high = hysteresis, battery_low, battery_high
        self.kw = {"battery_reserve": 0.0, **place_kw}  # battery is handled with hysteresis here
        self.state = _State(battery={d.id: d.battery for d in fleet.devices
                                     if d.battery is not None})
        self.state.drained = {d for d, b in self.state.battery.items() if b < battery_low}
        self.plan = plan or place_tables(self.tables(), objective)

    # -- the fleet as it is now ----------------------------------------------------------
    def fleet(self) -> Fleet:
        """The base fleet without departed devices, with current batteries, memory and links.
        Drained devices stay (they may still route traffic); :meth:`tables` bars them from
        hosting blocks."""
        s = self.state
        if self.base.entry in s.gone or self.base.exit in s.gone:
            raise PlanningError(f"the fleet's entry/exit device is gone ({self.base.entry}, "
                                f"{self.base.exit}): requests cannot arrive or return")
        devs = tuple(replace(d, battery=s.battery.get(d.id, d.battery),
                             memory_pressure=s.pressure.get(d.id, d.memory_pressure))
                     for d in self.base.devices if d.id not in s.gone)
        ids = {d.id for d in devs}
        links = tuple(replace(ln, bandwidth_scale=s.scale.get(frozenset((ln.a, ln.b)),
                                                              ln.bandwidth_scale))
                      for ln in self.base.links if ln.a in ids and ln.b in ids)
        return replace(self.base, devices=devs, links=links)

    def tables(self) -> CostTables:
        t = tables_for(self.model, self.fleet(), **self.kw)  # type: ignore[arg-type]
        for d in self.state.drained & set(t.devices):
            k = t.index[d]
            t.ok[k] = False
            t.excluded[d] = f"battery below {self.low:.0%} (back above {self.high:.0%})"
        return t

    # -- events --------------------------------------------------------------------------
    def on_event(self, event: Event) -> Decision:
        handler = _HANDLERS.get(type(event))
        if handler is None:
            raise ConfigError(f"unknown fleet event {event!r}")
        what = handler(self, event)
        t = self.tables()
        key = O.get(self.objective).key
        try:
            cur = O.evaluate(self.plan, t)
            cur_ok = bool(cur["feasible"])
        except EdgeweaveError:  # a stage names a device that left
            cur, cur_ok = {}, False
        best = place_tables(t, self.objective)
        opt = best.predicted[key]
        if cur_ok and cur[key] <= opt * (1 + self.hysteresis):
            self.plan = O.make_plan(t, O.stage_indices(self.plan, t), self.objective,
                                    self.plan.notes)
            return Decision(self.plan, False, 0, f"{what}; kept the plan: "
                            f"{cur[key]:.4g} is within {self.hysteresis:.0%} of the best {opt:.4g}")
        new = self._smallest_change(t, best, opt)
        moved = moved_layers(self.plan, new)
        why = "the plan broke" if not cur_ok else (
            f"{cur[key]:.4g} -> {new.predicted[key]:.4g} ({key})")
        self.plan = new
        return Decision(new, True, moved, f"{what}; re-planned: {why}, {moved} layers moved")

    def _smallest_change(self, t: CostTables, best: Plan, opt: float) -> Plan:
        """Among plans within the hysteresis of ``opt``, the one moving the fewest layers."""
        obj = O.get(self.objective)
        if obj.combine != "sum":
            return best
        V, L = len(t.variants), t.L
        keep = np.ones((t.n, V, L))
        vnames = [v.name for v in t.variants]
        for s in self.plan.stages:
            if s.device in t.devices and s.variant in vnames:
                keep[t.index[s.device], vnames.index(s.variant),
                     s.shard.start:s.shard.end] = 0.0
        chosen, fewest = best, moved_layers(self.plan, best)
        for factor in (4.0, 1.0, 0.25):  # price per moved block, largest first
            lam = factor * self.hysteresis * opt / L
            value, parts, _ = search(t, obj, penalty=keep * lam)
            if not np.isfinite(value):
                continue
            cand = O.make_plan(t, parts, self.objective, best.notes)
            m = moved_layers(self.plan, cand)
            if cand.predicted[obj.key] <= opt * (1 + self.hysteresis) and m < fewest:
                chosen, fewest = cand, m
                break
        return chosen


@handles(BatteryLevel)
def _battery(a: Adapter, e: BatteryLevel) -> str:  # type: ignore[misc]
    a.state.battery[e.device] = e.level
    if e.level < a.low:
        a.state.drained.add(e.device)
    elif e.level >= a.high:
        a.state.drained.discard(e.device)
    return f"battery of {e.device} at {e.level:.0%}"


@handles(DeviceGone)
def _gone(a: Adapter, e: DeviceGone) -> str:  # type: ignore[misc]
    a.base.device(e.device)
    a.state.gone.add(e.device)
    return f"{e.device} is gone"


@handles(DeviceBack)
def _back(a: Adapter, e: DeviceBack) -> str:  # type: ignore[misc]
    a.base.device(e.device)
    a.state.gone.discard(e.device)
    return f"{e.device} is back"


@handles(BandwidthChange)
def _bandwidth(a: Adapter, e: BandwidthChange) -> str:  # type: ignore[misc]
    if not any({ln.a, ln.b} == {e.a, e.b} for ln in a.base.links):
        raise ConfigError(f"no link {e.a}-{e.b} in fleet {a.base.name!r}")
    if e.scale <= 0:
        raise ConfigError(f"bandwidth scale must be > 0 (got {e.scale})")
    a.state.scale[frozenset((e.a, e.b))] = e.scale
    return f"link {e.a}-{e.b} at {e.scale:.0%} of nominal"


@handles(MemoryPressure)
def _memory(a: Adapter, e: MemoryPressure) -> str:  # type: ignore[misc]
    a.base.device(e.device)
    if not 0 <= e.fraction < 1:
        raise ConfigError(f"memory pressure must be in [0, 1) (got {e.fraction})")
    a.state.pressure[e.device] = e.fraction
    return f"{e.device} memory {e.fraction:.0%} used by others"


@handles(FleetChanged)
def _fleet_changed(a: Adapter, e: FleetChanged) -> str:  # type: ignore[misc]
    before = set(a.base.ids)
    a.base = e.fleet
    if e.variants is not None:
        a.kw["variants"] = dict(e.variants)
    for d in e.fleet.devices:  # a newcomer's battery starts its hysteresis where it is
        if d.id not in a.state.battery and d.battery is not None:
            a.state.battery[d.id] = d.battery
            if d.battery < a.low:
                a.state.drained.add(d.id)
    new = sorted(set(e.fleet.ids) - before)
    return f"{e.reason}{' (new: ' + ', '.join(new) + ')' if new else ''}"
