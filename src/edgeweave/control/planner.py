"""Fleet events -> the planner's events (``edgeweave.plan.adapt``) -> a new plan.

:class:`PlannerBridge` is the ``adapt`` callable of :class:`~edgeweave.control.wiring.
FleetController`: it translates a control-plane event into the adapter's event type, lets the
:class:`~edgeweave.plan.adapt.Adapter` decide (it owns the hysteresis and the smallest-change
rule) and returns the new plan when the decision changed it.

Device names on the broker must be the fleet's device ids. Battery thresholds of the monitor
should be the adapter's (:func:`monitor_config_for`), so ``battery_low`` fires below the
adapter's low mark and ``battery_ok`` at its high mark.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from edgeweave.control.events import EventKind, FleetEvent, MonitorConfig
from edgeweave.control.monitor import NodeState
from edgeweave.types import Plan

log = logging.getLogger(__name__)

Translate = Callable[[Any, FleetEvent, NodeState | None], object | None]
_TRANSLATE: dict[EventKind, Translate] = {}


def translates(*kinds: EventKind) -> Callable[[Translate], Translate]:
    def deco(fn: Translate) -> Translate:
        for k in kinds:
            _TRANSLATE[k] = fn
        return fn
    return deco


@translates(EventKind.GONE)
def _gone(adapter: Any, ev: FleetEvent, node: NodeState | None) -> object:
    from edgeweave.plan.adapt import DeviceGone

    return DeviceGone(ev.device)


@translates(EventKind.BACK)
def _back(adapter: Any, ev: FleetEvent, node: NodeState | None) -> object:
    from edgeweave.plan.adapt import DeviceBack

    return DeviceBack(ev.device)


@translates(EventKind.BATTERY_LOW, EventKind.BATTERY_OK)
def _battery(adapter: Any, ev: FleetEvent, node: NodeState | None) -> object:
    from edgeweave.plan.adapt import BatteryLevel

    return BatteryLevel(ev.device, float(ev.detail["value"]))


@translates(EventKind.MEMORY_PRESSURE, EventKind.MEMORY_OK)
def _memory(adapter: Any, ev: FleetEvent, node: NodeState | None) -> object | None:
    """Free memory -> the fraction of the device's memory others use (needs its total)."""
    from edgeweave.plan.adapt import MemoryPressure

    total = None
    try:
        total = adapter.base.device(ev.device).profile.memory
    except Exception:  # noqa: BLE001 - not in the fleet file: fall back to what it announced
        if node is not None:
            total = node.profile.get("memory_bytes") or node.profile.get("memory")
    if not total:
        return None
    used_by_others = 1.0 - float(ev.detail["value"]) * 2**20 / float(total)
    return MemoryPressure(ev.device, min(max(used_by_others, 0.0), 0.99))


@translates(EventKind.LINK_DEGRADED, EventKind.LINK_OK)
def _link(adapter: Any, ev: FleetEvent, node: NodeState | None) -> object | None:
    """A node's link quality scales its link towards the fleet's entry, where one exists."""
    from edgeweave.plan.adapt import BandwidthChange

    entry = adapter.base.entry
    if not any({ln.a, ln.b} == {ev.device, entry} for ln in adapter.base.links):
        return None
    return BandwidthChange(ev.device, entry, max(float(ev.detail["value"]), 0.01))


def monitor_config_for(adapter: Any, base: MonitorConfig | None = None) -> MonitorConfig:
    """Monitor thresholds that match the adapter's battery hysteresis."""
    return replace(base or MonitorConfig(), battery_low=adapter.low,
                   battery_hysteresis=adapter.high - adapter.low)


class PlannerBridge:
    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter
        self.decisions: list[Any] = []

    def __call__(self, plan: Plan, ev: FleetEvent, nodes: Mapping[str, NodeState]) -> Plan | None:
        translate = _TRANSLATE.get(ev.kind)
        event = translate(self.adapter, ev, nodes.get(ev.device)) if translate else None
        if event is None:
            return None
        decision = self.adapter.on_event(event)
        self.decisions.append(decision)
        log.info("fleet event %s on %s: %s", ev.kind, ev.device, decision.reason)
        return decision.plan if decision.changed else None
