"""The server side of a fleet that assembles itself.

:class:`FleetAssembler` watches a :class:`~edgeweave.control.monitor.FleetMonitor`:

* :meth:`~FleetAssembler.wait` blocks until ``min_nodes`` nodes are admitted (announced,
  certificate verified against the fleet CA, ``admit_heartbeats`` heartbeats heard), waits a
  moment for their peer measurements, and returns the fleet they form
  (:func:`~edgeweave.control.discovered.fleet_from_announcements`);
* after :meth:`~FleetAssembler.install` (the coordinator attached, the planner's
  :class:`~edgeweave.plan.adapt.Adapter` made), a node admitted later is added to the
  coordinator and the adapter re-plans with hysteresis (:class:`~edgeweave.plan.adapt.
  FleetChanged`); a node that returns at a new address is reached there. Departures are the
  :class:`~edgeweave.control.wiring.FleetController`'s (failover), as before;
* :meth:`~FleetAssembler.status` is what ``/v1/fleet`` serves and what the server publishes
  (retained) for ``edgeweave fleet status``.

An announcement that is malformed or whose certificate does not verify is ignored and
logged once per reason; such a node is never given a stage.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from edgeweave.control.announce import Announcement, verify_certificate
from edgeweave.control.discovered import (
    DEFAULT_LINK,
    DiscoveredFleet,
    Overlay,
    fleet_from_announcements,
)
from edgeweave.control.events import EventKind, FleetEvent
from edgeweave.control.monitor import FleetMonitor, NodeState
from edgeweave.errors import ConfigError
from edgeweave.types import Plan

log = logging.getLogger(__name__)


class DiscoveryError(ConfigError):
    """Not enough nodes announced themselves in time."""


@dataclass(frozen=True)
class DiscoveryOptions:
    """``serve --mqtt``'s discovery: serve once ``min_nodes`` nodes are admitted, waiting at
    most ``wait_s`` for them; then up to ``measure_wait_s`` more for their link measurements
    (links not measured by then are priced as ``default_link`` until the next re-plan)."""

    min_nodes: int = 1
    wait_s: float = 60.0
    measure_wait_s: float = 3.0
    default_link: str = DEFAULT_LINK

    def __post_init__(self) -> None:
        if self.min_nodes < 1:
            raise ConfigError(f"--min-nodes {self.min_nodes} must be >= 1")
        if self.wait_s <= 0 or self.measure_wait_s < 0:
            raise ConfigError("--discover-wait must be > 0 seconds")
        from edgeweave.profile import catalog

        catalog.link(self.default_link)  # an unknown class fails now, with the choices


@dataclass(frozen=True)
class Replan:
    """One re-plan on a fleet change, as ``/v1/fleet`` reports it."""

    at: float  # wall-clock time
    device: str
    trigger: str  # joined | rejoined
    changed: bool
    moved_layers: int
    decide_s: float  # the planner's decision
    switch_s: float  # the coordinator's switch (load stages, replay sessions)
    reason: str


def make_fleet_adapter(model: str, discovered: DiscoveredFleet, objective: str = "latency",
                       policy: Any = None) -> Any:
    """The planner over a discovered fleet (its ``plan`` is the one to serve): the model's
    shape, the variants the nodes run, the command line's policy on top of the fleet file's."""
    from edgeweave.models.catalog import resolve
    from edgeweave.models.checkpoint import read_config
    from edgeweave.plan.adapt import Adapter
    from edgeweave.plan.fleet import with_policy

    fleet = discovered.fleet
    if policy is not None and policy.given:
        fleet = with_policy(fleet, policy.keep_in, policy.hidden_states, policy.max_cost)
    return Adapter(fleet, read_config(resolve(model)[1]), objective,
                   variants=dict(discovered.variants))


def _finite(d: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-safe predicted figures: an infinite cost (infeasible) becomes null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in d.items()}


def plan_dict(plan: Plan) -> list[dict[str, Any]]:
    return [{"device": s.device, "blocks": [s.shard.start, s.shard.end], "variant": s.variant,
             "codec": s.codec} for s in plan.stages]


class FleetAssembler:
    def __init__(self, monitor: FleetMonitor, *, ca_pem: bytes | None = None,
                 overlay: Overlay | None = None,
                 options: DiscoveryOptions | None = None) -> None:
        self.monitor, self.ca_pem = monitor, ca_pem
        self.overlay, self.options = overlay, options or DiscoveryOptions()
        self.admitted: dict[str, Announcement] = {}
        self.rejected: dict[str, str] = {}
        self.replans: list[Replan] = []
        self.coordinator: Any = None
        self.adapter: Any = None
        self.notes: tuple[str, ...] = ()
        self._lock = threading.RLock()
        self._cv = threading.Condition(self._lock)
        # subscribed before any FleetController: a node that returns at a new address is
        # reached there before the failover logic plans on it again
        monitor.subscribe(self._on_event)

    # -- admission -----------------------------------------------------------------------
    def check(self, device: str, node: NodeState | None) -> Announcement | None:
        """The node's announcement if it may join, else None (the reason logged once)."""
        if node is None:
            return None
        try:
            ann = Announcement.from_profile(device, node.profile)
            reason = None if self.ca_pem is None else verify_certificate(ann.cert_pem,
                                                                         self.ca_pem, device)
            if reason is None:
                ann.profile()  # an unknown device class is refused here, not in the planner
        except ConfigError as e:
            reason = str(e)
        if reason is None:
            with self._lock:
                self.rejected.pop(device, None)
            return ann
        with self._lock:
            if self.rejected.get(device) != reason:
                log.warning("ignoring node %s: %s", device, reason)
                self.rejected[device] = reason
        return None

    def ready(self) -> dict[str, Announcement]:
        """Admissible nodes online now (READY: heard their first heartbeats)."""
        out = {}
        for d, n in self.monitor.nodes().items():
            if n.online and n.ready:
                ann = self.check(d, n)
                if ann is not None:
                    out[d] = ann
        return out

    def measurements(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {d: n.links for d, n in self.monitor.nodes().items() if n.links}

    def _measured(self, devices: list[str]) -> bool:
        m = self.measurements()
        return all(b in m.get(a, {}) for a in devices for b in devices if a != b)

    def wait(self) -> DiscoveredFleet:
        """Block until ``min_nodes`` nodes are admitted; the fleet they form."""
        o = self.options
        deadline = time.monotonic() + o.wait_s
        while len(ready := self.ready()) < o.min_nodes:
            if time.monotonic() > deadline:
                have = ", ".join(sorted(ready)) or "none"
                ignored = "; ".join(f"{d}: {r}" for d, r in sorted(self.rejected.items()))
                raise DiscoveryError(
                    f"{len(ready)} of the {o.min_nodes} nodes needed announced themselves on "
                    f"fleet {self.monitor.fleet!r} within {o.wait_s:g} s (admitted: {have}"
                    f"{'; ignored: ' + ignored if ignored else ''}): start "
                    f"`{self.monitor.source.join_hint}` on more devices, lower "
                    "--min-nodes, or raise --discover-wait")
            time.sleep(0.05)
        until = time.monotonic() + o.measure_wait_s
        while time.monotonic() < until and not self._measured(sorted(ready)):
            time.sleep(0.05)
            ready = self.ready()
        with self._lock:
            self.admitted.update(ready)
            return self.fleet()

    def fleet(self) -> DiscoveredFleet:
        with self._lock:
            online = {d for d, n in self.monitor.nodes().items() if n.online}
            d = fleet_from_announcements(list(self.admitted.values()), self.measurements(),
                                         self.overlay, name=self.monitor.fleet,
                                         default_link=self.options.default_link,
                                         online=online)
            self.notes = d.notes
            return d

    # -- serving -------------------------------------------------------------------------
    def install(self, coordinator: Any, adapter: Any) -> None:
        with self._lock:
            self.coordinator, self.adapter = coordinator, adapter
        self.publish()

    def members_only(self, adapt: Any) -> Any:
        """Wrap a FleetController ``adapt`` callable so that events of devices outside the
        fleet (ignored nodes) never reach the planner."""
        def call(plan: Plan, ev: FleetEvent, nodes: Mapping[str, NodeState]) -> Plan | None:
            with self._lock:
                member = self.adapter is not None and ev.device in self.adapter.base.ids
            return adapt(plan, ev, nodes) if member else None
        return call

    def _on_event(self, ev: FleetEvent) -> None:  # the monitor's dispatcher thread
        if ev.kind == EventKind.READY:
            self._admit(ev.device)
        elif ev.kind == EventKind.BACK:
            ann = self.check(ev.device, self.monitor.nodes().get(ev.device))
            with self._lock:
                if ann is not None and ev.device in self.admitted and self.coordinator:
                    self.admitted[ev.device] = ann
                    self.coordinator.add_device(ev.device, ann.address)
        elif ev.kind == EventKind.GONE:
            with self._lock:
                base = self.adapter.base if self.adapter is not None else None
                if base is not None and ev.device in (base.entry, base.exit):
                    # the planner's entry stands for the server: move it to a live node
                    # before the failover re-plans without the departed one
                    self.adapter.base = self.fleet().fleet
        if ev.kind in (EventKind.GONE, EventKind.BACK, EventKind.JOINED):
            self.publish()

    def _admit(self, device: str) -> None:
        ann = self.check(device, self.monitor.nodes().get(device))
        if ann is None:
            self.publish()
            return
        with self._lock:
            old = self.admitted.get(device)
            self.admitted[device] = ann
            if self.coordinator is None:  # still discovering: wait() plans with it
                return
            self.coordinator.add_device(device, ann.address)
            self._replan(device, "joined" if old is None else "rejoined")
        self.publish()

    def _replan(self, device: str, trigger: str) -> None:
        from edgeweave.plan.adapt import FleetChanged

        t0 = time.perf_counter()
        d = self.fleet()
        decision = self.adapter.on_event(FleetChanged(d.fleet, d.variants,
                                                      f"{device} {trigger}"))
        decide = time.perf_counter() - t0
        switch = 0.0
        if decision.changed and decision.plan.stages != self.coordinator.plan.stages:
            switch = float(self.coordinator.apply_plan(decision.plan))
        log.info("fleet change (%s %s): %s", device, trigger, decision.reason)
        with self._cv:
            self.replans.append(Replan(time.time(), device, trigger, decision.changed,
                                       decision.moved_layers, decide, switch, decision.reason))
            self._cv.notify_all()

    def wait_replan(self, device: str, timeout: float = 30.0) -> Replan | None:
        """The first re-plan triggered by ``device`` (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for r in self.replans:
                    if r.device == device:
                        return r
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(left)

    # -- what /v1/fleet and `edgeweave fleet status` show --------------------------------
    def status(self) -> dict[str, Any]:
        from edgeweave.plan import objectives

        nodes = self.monitor.nodes()
        with self._lock:
            coord, adapter = self.coordinator, self.adapter
            plan = coord.plan if coord is not None else None
            in_plan = {s.device for s in plan.stages} if plan is not None else set()
            failed = set(coord.failed) if coord is not None else set()
            members = []
            for d, ann in sorted(self.admitted.items()):
                n = nodes.get(d)
                prof = ann.profile()
                battery = n.telemetry.battery if n and n.telemetry else ann.battery
                members.append({
                    "device": d, "address": ann.address, "online": bool(n and n.online),
                    "in_plan": d in in_plan, "failed": d in failed,
                    "class": ann.device_class,
                    "measured_by": ann.measured.get("source") if ann.measured else None,
                    "memory_bytes": prof.memory, "mem_bw_bps": prof.mem_bw,
                    "compute_ops": prof.compute, "variants": list(ann.variants),
                    "backend": ann.backend, "battery": battery, "zone": ann.zone,
                    "cert_sha256": ann.fingerprint, "peers": dict(n.links) if n else {}})
            predicted: dict[str, Any] = {}
            if plan is not None and adapter is not None:
                try:
                    predicted = _finite(objectives.evaluate(plan, adapter.tables()))
                except Exception as e:  # noqa: BLE001 - a plan on a departed device
                    predicted = {"error": f"{type(e).__name__}: {e}"}
            return {
                "fleet": self.monitor.fleet,
                "entry": adapter.base.entry if adapter is not None else None,
                "members": members,
                "rejected": [{"device": d, "reason": r} for d, r in sorted(self.rejected.items())],
                "plan": None if plan is None else {"objective": plan.objective,
                                                   "stages": plan_dict(plan)},
                "predicted": predicted,
                "replans": [asdict(r) for r in self.replans[-20:]],
                "notes": list(self.notes),
                "at": time.time(),
            }

    def publish(self) -> None:
        """The status, retained on the broker for ``edgeweave fleet status`` (over mDNS there
        is no broker: ``/v1/fleet`` serves it)."""
        try:
            body = json.dumps({"v": 1, **self.status()}, default=str).encode()
            self.monitor.publish_status(body)
        except Exception:  # noqa: BLE001 - the status is informative; serving goes on
            log.exception("could not publish the fleet status")
