"""Adaptation: events re-plan when they must, hysteresis prevents flapping."""

from __future__ import annotations

import pytest

from edgeweave.errors import ConfigError, PlanningError
from edgeweave.plan.adapt import (
    Adapter,
    BandwidthChange,
    BatteryLevel,
    DeviceBack,
    DeviceGone,
    MemoryPressure,
    moved_layers,
)
from edgeweave.profile import catalog
from edgeweave.types import Fleet, FleetDevice, Link, Plan
from tests.plan.test_fleet import SMOL


def home(battery: float = 0.9) -> Fleet:
    dev = catalog.device
    devs = (FleetDevice("hub", dev("rpi4-4gb")),
            FleetDevice("phone", dev("phone-flagship"), battery=battery),
            FleetDevice("gw", dev("minipc-n100")),
            FleetDevice("edge", dev("jetson-orin-nano-8gb")))
    links = (Link("hub", "gw", catalog.link("wifi5")), Link("phone", "gw", catalog.link("wifi6")),
             Link("gw", "edge", catalog.link("ethernet")))
    return Fleet("home", devs, links, "hub", "hub")


def used(plan: Plan) -> set[str]:
    return {s.device for s in plan.stages}


def test_device_gone_and_back() -> None:
    a = Adapter(home(), SMOL, "latency")
    first = a.plan
    victim = first.stages[0].device
    d = a.on_event(DeviceGone(victim))
    assert d.changed and victim not in used(d.plan) and d.moved_layers > 0
    assert "gone" in d.reason
    d = a.on_event(DeviceBack(victim))
    assert d.changed and used(d.plan) == used(first)


def test_battery_hysteresis_does_not_flap() -> None:
    a = Adapter(home(), SMOL, "energy")  # the phone is the most frugal device
    assert "phone" in used(a.plan)
    d = a.on_event(BatteryLevel("phone", 0.15))
    assert d.changed and "phone" not in used(d.plan)
    changes = 0
    for level in (0.21, 0.19, 0.22, 0.18, 0.25, 0.2):  # hovering around the low threshold
        changes += a.on_event(BatteryLevel("phone", level)).changed
    assert changes == 0 and "phone" not in used(a.plan)
    d = a.on_event(BatteryLevel("phone", 0.4))  # clearly recharged
    assert d.changed and "phone" in used(d.plan)


def test_small_bandwidth_wobble_keeps_the_plan_big_drop_replans() -> None:
    a = Adapter(home(), SMOL, "latency", hysteresis=0.10)
    for s in (0.9, 1.1, 0.95, 1.05):
        assert not a.on_event(BandwidthChange("gw", "edge", s)).changed
    with pytest.raises(ConfigError, match="no link"):
        a.on_event(BandwidthChange("hub", "edge", 0.5))


def test_memory_pressure_breaks_a_stage_and_moves_few_layers() -> None:
    a = Adapter(home(), SMOL, "throughput")
    before = a.plan
    busy = max(before.stages, key=lambda s: s.shard.size).device
    d = a.on_event(MemoryPressure(busy, 0.9999))
    assert d.changed
    assert d.moved_layers == moved_layers(before, d.plan) > 0


def test_smallest_change_prefers_fewer_moves_within_hysteresis() -> None:
    a = Adapter(home(), SMOL, "latency", hysteresis=0.5)
    before = a.plan
    d = a.on_event(DeviceGone(before.stages[-1].device))
    assert d.changed
    # with a generous hysteresis the kept layers stay where they were whenever possible
    moved_opt = moved_layers(before, Adapter(a.fleet(), SMOL, "latency").plan)
    assert d.moved_layers <= moved_opt


def test_entry_gone_is_a_planning_error() -> None:
    a = Adapter(home(), SMOL)
    with pytest.raises(PlanningError, match="entry/exit"):
        a.on_event(DeviceGone("hub"))
    with pytest.raises(ConfigError):
        a.on_event(DeviceGone("nobody"))
