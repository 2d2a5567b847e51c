"""A node vanishing from the control plane makes the coordinator fail over mid-generation."""

from __future__ import annotations

import time

from edgeweave.control.agent import NodeAgent
from edgeweave.control.events import EventKind
from edgeweave.control.monitor import FleetMonitor
from edgeweave.control.wiring import FleetController
from edgeweave.models.checkpoint import load_folder
from edgeweave.runtime.engine import LocalEngine
from edgeweave.runtime.generate import SamplingParams, generate_step
from edgeweave.runtime.launch import embedded
from edgeweave.types import Plan
from tests.control.test_fleet_monitor import DEADLINE_S, _agent_process


def test_vanishing_node_triggers_failover_and_the_stream_continues(broker, fleet, tiny_folder):
    lm = load_folder(tiny_folder)
    prompt, params = [1, 5, 9, 11], SamplingParams(max_tokens=16, ignore_eos=True)
    reference = list(generate_step(LocalEngine(lm.model, 64), prompt, params))

    coord = embedded(str(tiny_folder), Plan.split(4, [1, 3], ["d0", "d1", "d2"]), loaded=lm,
                     max_len=64).coordinator
    victim = _agent_process(broker, fleet, "d1")
    try:
        # the monitor stops first, so d0 and d2 leaving at the end trigger nothing
        with NodeAgent("d0", broker.host, broker.port, fleet=fleet, heartbeat_s=0.2), \
                NodeAgent("d2", broker.host, broker.port, fleet=fleet, heartbeat_s=0.2), \
                FleetMonitor(broker.host, broker.port, fleet=fleet) as mon:
            ctl = FleetController(mon, coord)
            for d in ("d0", "d1", "d2"):
                assert mon.wait_for(EventKind.JOINED, d, 10)
            session = coord.new_session(64)
            tokens = []
            for tok in generate_step(session, prompt, params):
                tokens.append(tok)
                if len(tokens) == 6:  # mid-stream, between two tokens
                    killed = time.monotonic()
                    victim.kill()
                    action = ctl.wait_for("mark_failed", "d1", DEADLINE_S)
                    assert action is not None and action.error is None
                    assert "d1" not in {s.device for s in coord.plan.stages}
            session.close()
            taken, failovers = [a.action for a in ctl.actions], coord.stats["failovers"]
    finally:
        victim.kill()
        victim.wait(5)
        coord.close()
    assert tokens == reference  # no token lost or doubled, greedy output unchanged
    assert action.at - killed < DEADLINE_S
    assert taken == ["mark_failed"]
    assert failovers == 1
