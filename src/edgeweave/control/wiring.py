"""Fleet events -> runtime actions: the control plane driving a coordinator.

* ``gone`` -> ``coordinator.mark_failed(device)``: the coordinator re-plans on the survivors
  and replays open sessions, so streams continue without lost or doubled tokens.
* ``back`` -> ``coordinator.mark_alive(device)`` where the coordinator has it (a device that
  returns may be planned on again).
* any event -> ``adapt(plan, event, nodes)``, when an adapter is given (the planner's
  ``plan.adapt``): a returned plan that differs from the current one is applied between
  tokens with ``coordinator.apply_plan``. :class:`~edgeweave.control.planner.PlannerBridge`
  is that adapter for ``edgeweave.plan.adapt.Adapter``.

Actions run on the monitor's dispatcher thread, never on the MQTT network thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edgeweave.control.events import EventKind, FleetEvent
from edgeweave.control.monitor import FleetMonitor, NodeState
from edgeweave.errors import EdgeweaveError
from edgeweave.types import Plan

log = logging.getLogger(__name__)

Adapter = Callable[[Plan, FleetEvent, Mapping[str, NodeState]], Plan | None]


@dataclass(frozen=True)
class ControlAction:
    event: FleetEvent
    action: str  # "mark_failed" | "mark_alive" | "apply_plan" | "adapt" (a failed decision)
    seconds: float  # what the coordinator reported (recovery or switch time)
    at: float  # monotonic time the action finished
    error: str | None = None


class FleetController:
    def __init__(self, monitor: FleetMonitor, coordinator: Any,
                 adapt: Adapter | None = None) -> None:
        self.monitor, self.coordinator, self.adapt = monitor, coordinator, adapt
        self.actions: list[ControlAction] = []
        self._cv = threading.Condition()
        monitor.subscribe(self._on_event)

    def _on_event(self, ev: FleetEvent) -> None:
        if ev.kind == EventKind.GONE:
            self._act(ev, "mark_failed", lambda: self.coordinator.mark_failed(ev.device))
        elif ev.kind == EventKind.BACK and callable(getattr(self.coordinator, "mark_alive", None)):
            self._act(ev, "mark_alive", lambda: self.coordinator.mark_alive(ev.device))
        if self.adapt is not None:
            try:
                new = self.adapt(self.coordinator.plan, ev, self.monitor.nodes())
            except Exception as e:  # noqa: BLE001 - e.g. no feasible plan: keep serving
                log.exception("adapting to %s failed", ev)
                self._record(ControlAction(ev, "adapt", 0.0, time.monotonic(),
                                           f"{type(e).__name__}: {e}"))
                return
            # compare stages only: predictions and notes differ between equal placements
            if new is not None and new.stages != self.coordinator.plan.stages:
                self._act(ev, "apply_plan", lambda: self.coordinator.apply_plan(new))

    def _act(self, ev: FleetEvent, name: str, fn: Callable[[], Any]) -> None:
        error = None
        seconds = 0.0
        try:
            out = fn()
            seconds = float(out) if isinstance(out, (int, float)) else 0.0
        except EdgeweaveError as e:  # an expected refusal (closed, no survivor): one line
            log.warning("%s for %s failed: %s", name, ev.device, e)
            error = f"{type(e).__name__}: {e}"
        except Exception as e:  # noqa: BLE001 - recorded; the control plane keeps running
            log.exception("%s for %s failed", name, ev.device)
            error = f"{type(e).__name__}: {e}"
        self._record(ControlAction(ev, name, seconds, time.monotonic(), error))

    def _record(self, action: ControlAction) -> None:
        with self._cv:
            self.actions.append(action)
            self._cv.notify_all()

    def wait_for(self, action: str, device: str, timeout: float = 10.0) -> ControlAction | None:
        """The first recorded ``action`` taken for ``device`` (None after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for a in self.actions:
                    if a.action == action and a.event.device == device:
                        return a
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(left)
