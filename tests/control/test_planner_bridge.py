"""Control-plane events drive the planner's Adapter, and the coordinator switches plans."""

from __future__ import annotations

import pytest

from edgeweave.control.agent import NodeAgent
from edgeweave.control.events import EventKind, FleetEvent
from edgeweave.control.messages import Telemetry
from edgeweave.control.monitor import FleetMonitor, NodeState
from edgeweave.control.planner import PlannerBridge, monitor_config_for
from edgeweave.control.wiring import FleetController
from edgeweave.models.checkpoint import load_folder
from edgeweave.plan.adapt import Adapter
from edgeweave.profile.variants import DEFAULT_VARIANTS
from edgeweave.runtime.generate import SamplingParams, generate_step
from edgeweave.runtime.launch import embedded
from tests.plan.test_adapt import home

DEADLINE_S = 10.0


@pytest.fixture
def adapter(tiny_cfg) -> Adapter:
    # the battery-powered phone is the most frugal; fp32 only, as the test has no artifacts
    return Adapter(home(), tiny_cfg, "energy", variants={"fp32": DEFAULT_VARIANTS["fp32"]})


def devices(plan) -> set[str]:
    return {s.device for s in plan.stages}


def test_events_translate_to_planner_events(adapter):
    bridge = PlannerBridge(adapter)
    plan = adapter.plan
    assert devices(plan) == {"phone"}
    new = bridge(plan, FleetEvent(EventKind.BATTERY_LOW, "phone", {"value": 0.15}), {})
    assert new is not None and "phone" not in devices(new)
    assert bridge.decisions[-1].changed and "battery of phone at 15%" in bridge.decisions[-1].reason
    # within the adapter's hysteresis: no new plan
    assert bridge(new, FleetEvent(EventKind.BATTERY_OK, "phone", {"value": 0.25}), {}) is None
    assert bridge(new, FleetEvent(EventKind.JOINED, "phone"), {}) is None  # nothing to plan
    mem = adapter.base.device("gw").profile.memory
    bridge(new, FleetEvent(EventKind.MEMORY_PRESSURE, "gw", {"value": 0.1 * mem / 2**20}),
           {"gw": NodeState("gw")})
    assert bridge.decisions[-1].reason.startswith("gw memory 90% used by others")
    new2 = bridge(new, FleetEvent(EventKind.GONE, "gw"), {})
    assert new2 is not None and "gw" not in devices(new2)


def test_low_battery_telemetry_moves_the_stage_between_tokens(broker, fleet, tiny_folder,
                                                              adapter):
    lm = load_folder(tiny_folder)
    prompt, params = [1, 5, 9, 11], SamplingParams(max_tokens=12, ignore_eos=True)
    first_plan = adapter.plan
    undisturbed = embedded(str(tiny_folder), first_plan, loaded=lm, max_len=64).coordinator
    with undisturbed.new_session(64) as s:
        reference = list(generate_step(s, prompt, params))
    undisturbed.close()

    coord = embedded(str(tiny_folder), first_plan, loaded=lm, max_len=64).coordinator
    cfg = monitor_config_for(adapter)
    try:
        with FleetMonitor(broker.host, broker.port, fleet=fleet, config=cfg) as mon, \
                NodeAgent("phone", broker.host, broker.port, fleet=fleet) as phone:
            ctl = FleetController(mon, coord, adapt=PlannerBridge(adapter))
            assert mon.wait_for(EventKind.JOINED, "phone", DEADLINE_S)
            tokens = []
            with coord.new_session(64) as session:
                for tok in generate_step(session, prompt, params):
                    tokens.append(tok)
                    if len(tokens) == 5:
                        phone.publish_telemetry(Telemetry(1024, battery=0.15))
                        action = ctl.wait_for("apply_plan", "phone", DEADLINE_S)
                        assert action is not None and action.error is None
            final = coord.plan
    finally:
        coord.close()
    assert devices(first_plan) == {"phone"} and "phone" not in devices(final)
    assert tokens == reference  # the session moved between tokens and lost nothing
