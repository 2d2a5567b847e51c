"""What ``edgeweave serve`` puts behind the HTTP API (a :class:`ServeStack`): one model
in-process, or a plan.

* no plan: :class:`LocalSessions` (one whole-model stage engine of the chosen backend and
  variant, ONNX Runtime int4 by default; a KV cache per request);
* a plan, no node addresses: an embedded deployment (``runtime.launch.embedded``: every
  stage in this process);
* a plan and ``device=host:port`` addresses: a coordinator attached to running
  ``edgeweave node`` processes (``runtime.launch.attach``; mutual TLS with ``tls_dir``).

An MQTT broker address with no plan and no node addresses assembles the fleet from the
nodes' announcements (:mod:`edgeweave.control.assemble`: wait for ``min_nodes``, plan on their
measured figures, attach, re-plan when a node joins; the fleet file, if any, adds links,
zones, policy and pinned classes) and serves ``/v1/fleet``.

With an MQTT broker address and a plan, a :class:`FleetMonitor` watches the fleet and a
:class:`FleetController` fails the coordinator over when a node's last will arrives. With a
fleet file too, the planner's :class:`~edgeweave.plan.adapt.Adapter` re-plans on fleet events
(battery, memory, links, departures) and the coordinator switches plans between tokens; the
fleet file alone (no plan file) serves the planner's own placement.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeweave.errors import ConfigError
from edgeweave.netaddr import parse_hostport
from edgeweave.runtime.adapters import AdapterSpec, load_checked
from edgeweave.runtime.local import EngineChoice
from edgeweave.runtime.prefix import DEFAULT_BUDGET_MB
from edgeweave.serve.backend import (
    CoordinatorSessions,
    LocalSessions,
    SessionFactory,
    SpeculativeSessions,
)
from edgeweave.types import Plan

if TYPE_CHECKING:  # fastapi and the control plane load only where a stack uses them
    from fastapi import APIRouter

    from edgeweave.control.assemble import DiscoveryOptions, FleetAssembler
    from edgeweave.control.client import BrokerAuth
    from edgeweave.control.mdns import MdnsOptions
    from edgeweave.plan.adapt import Adapter
    from edgeweave.runtime.drafts import Speculation


def read_plan(path: str | Path) -> Plan:
    """A plan saved as JSON (``Plan.to_dict``), alone or under a ``"plan"`` key."""
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read the plan {p}: {e}; write it with Plan.to_dict() "
                          "as JSON") from e
    try:
        return Plan.from_dict(d.get("plan", d))
    except (KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"{p} is not a plan ({e}): expected {{\"stages\": [{{\"device\", "
                          "\"shard\": {\"start\", \"end\", \"n_layers\"}, ...}]}") from e


def parse_nodes(specs: Sequence[str]) -> dict[str, str]:
    """``["a=127.0.0.1:5001", ...]`` -> ``{"a": "127.0.0.1:5001"}``."""
    out = {}
    for s in specs:
        dev, sep, addr = s.partition("=")
        if not sep or not dev:
            raise ConfigError(f"--node {s!r} must look like DEVICE=HOST:PORT")
        parse_hostport(addr, flag=f"--node {dev}=")
        out[dev] = addr
    return out


@dataclass
class ServeStack:
    """The sessions ``serve`` answers requests from, with what runs beside them: the fleet
    monitor's stop (``closers``, started in order, stopped in reverse), extra endpoints
    (``/v1/fleet``) and, for a discovered fleet, its assembler."""

    backend: SessionFactory
    closers: list[Callable[[], None]] = field(default_factory=list)
    routers: list[APIRouter] = field(default_factory=list)
    assembler: FleetAssembler | None = None

    def close(self) -> None:
        for c in reversed(self.closers):
            c()
        self.backend.close()


@dataclass(frozen=True)
class PolicyOptions:
    """``serve``'s policy options, laid over the fleet file's ``policy`` (None keeps it)."""

    keep_in: str | None = None
    hidden_states: bool | None = None
    max_cost: float | None = None

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.keep_in, self.hidden_states, self.max_cost))


def make_adapter(model: str, fleet_file: str | Path, plan: Plan | None,
                 objective: str = "latency", policy: PolicyOptions | None = None) -> Adapter:
    """The re-planner of a served fleet; a given ``plan`` must keep the policy (it is refused
    before any node loads a stage), and every later re-plan keeps it too."""
    from edgeweave.models.catalog import resolve
    from edgeweave.models.checkpoint import read_config
    from edgeweave.plan import objectives
    from edgeweave.plan.adapt import Adapter
    from edgeweave.plan.fleet import load_fleet, with_policy

    spec = load_fleet(fleet_file)
    p = policy or PolicyOptions()
    the_fleet = with_policy(spec.fleet, p.keep_in, p.hidden_states, p.max_cost)
    # only variants the nodes can run: the model itself (fp32) and the fleet file's artifacts;
    # the planner's default catalogue also prices fp16/int8/int4 nobody has built yet
    runnable = {n: v for n, v in spec.variants.items() if n == "fp32" or v.source != "default"}
    adapter = Adapter(the_fleet, read_config(resolve(model)[1]), objective, plan=plan,
                      variants=runnable)
    if (plan is not None and the_fleet.policy.active
            and not objectives.evaluate(plan, adapter.tables())["feasible"]):
        raise ConfigError(
            f"the plan breaks the fleet's policy ({the_fleet.policy.describe()}) or another "
            f"constraint: see `edgeweave plan --fleet {fleet_file} --explain`, or serve "
            "without --plan to let the planner place the model")
    return adapter


def build(model: str, *, speculation: Speculation | None = None, **options: Any) -> ServeStack:
    """The sessions ``serve`` answers from (the options are :func:`build_sessions`'s);
    with ``speculation`` (``runtime.drafts``) a draft in this process proposes tokens that
    those sessions verify several at a time."""
    choice = options.get("choice")
    if speculation is not None and choice is not None and choice.batch_invariant:
        raise ConfigError("--batch-invariant with --draft: a verify pass scores several tokens "
                          "in one step, which rounds unlike a plain step; drop one of them")
    stack = build_sessions(model, **options)
    if speculation is None:
        return stack
    try:
        from edgeweave.runtime.drafts import build_draft

        draft = build_draft(speculation.draft, model, options.get("choice"))
        stack.backend = SpeculativeSessions(stack.backend, draft, speculation.draft.label,
                                            speculation.config)
    except BaseException:
        stack.close()
        raise
    return stack


def build_sessions(model: str, *, plan: str | Path | None = None, nodes: Sequence[str] = (),
          tls_dir: str | Path | None = None, mqtt: str | None = None,
          fleet: str | None = None, fleet_file: str | Path | None = None,
          objective: str = "latency", choice: EngineChoice | None = None,
          adapters: Sequence[AdapterSpec] = (),
          policy: PolicyOptions | None = None,
          prefix_cache_mb: int = DEFAULT_BUDGET_MB,
          discovery: DiscoveryOptions | None = None, mqtt_auth: BrokerAuth | None = None,
          mdns: MdnsOptions | None = None) -> ServeStack:
    """``choice`` is the backend (and, without a plan, the variant) every stage runs;
    ``adapters`` are LoRA adapters served unmerged beside the base (in this process, or
    sent by the coordinator to every stage of the plan); ``policy`` overrides the fleet
    file's data-residency and cost policy; ``prefix_cache_mb`` bounds the prefix KV cache
    (0 disables it; on a plan, every node's memory cap bounds its donors too).
    ``mqtt`` alone (no ``plan``, no ``nodes``) discovers the fleet: ``discovery``
    (``control.assemble.DiscoveryOptions``) says how long to wait for how many nodes,
    ``mqtt_auth`` (``control.client.BrokerAuth``) how to log in to the broker; ``mdns``
    (``control.mdns.MdnsOptions``) in place of ``mqtt`` hears the fleet over DNS-SD."""
    if prefix_cache_mb < 0:
        raise ConfigError(f"--prefix-cache-mb must be >= 0 (got {prefix_cache_mb}): 0 "
                          "disables the prefix cache")
    prefix_bytes = prefix_cache_mb << 20
    choice = choice or EngineChoice()
    if (mqtt or mdns is not None) and plan is None and not nodes:
        if adapters:  # refused before any node is asked to load a stage
            load_checked(tuple(adapters), model, Path(model).name)
        return discover(model, mqtt, fleet=fleet, fleet_file=fleet_file, tls_dir=tls_dir,
                        objective=objective, choice=choice, adapters=adapters, policy=policy,
                        prefix_bytes=prefix_bytes, options=discovery, auth=mqtt_auth,
                        mdns=mdns)
    if policy is not None and policy.given and fleet_file is None:
        raise ConfigError("--keep-in, --hidden-states-in-zone and --max-cost need --fleet-file: "
                          "the zones and prices are the fleet file's devices'")
    if plan is None and fleet_file is None:
        if nodes:
            raise ConfigError("--node: need --plan or --fleet-file: it names the devices of a "
                              "distributed plan (or use --mqtt to discover the nodes)")
        return ServeStack(LocalSessions.load(model, choice, adapters=adapters,
                                             prefix_cache_bytes=prefix_bytes))
    if adapters:  # refused before any node is asked to load a stage
        load_checked(tuple(adapters), model, Path(model).name)
    the_plan = read_plan(plan) if plan is not None else None
    adapter = make_adapter(model, fleet_file, the_plan, objective, policy) if fleet_file else None
    if the_plan is None:
        the_plan = adapter.plan
    addresses = parse_nodes(nodes)
    if addresses:
        from edgeweave.runtime.launch import attach
        from edgeweave.security.tls import TLSFiles

        tls = TLSFiles.from_dir(tls_dir, "coordinator") if tls_dir is not None else None
        dep = attach(the_plan, model, addresses, tls=tls, backend=choice.backend,
                     batch_invariant=choice.batch_invariant,
                     prefix_cache_bytes=prefix_bytes)
    else:
        from edgeweave.runtime.launch import embedded

        dep = embedded(model, the_plan, backend=choice.backend, prefix_cache_bytes=prefix_bytes,
                       batch_invariant=choice.batch_invariant)
    coord = dep.coordinator  # nothing launched: closing the sessions closes all of it
    sessions = CoordinatorSessions(coord, dep.tokenizer, model_id=Path(model).name)
    try:
        sessions.add_adapters(adapters)  # sent to every stage (and to stages of later plans)
    except BaseException:
        sessions.close()
        raise
    stack = ServeStack(sessions)
    if mqtt or mdns is not None:
        from edgeweave.control.monitor import FleetMonitor
        from edgeweave.control.planner import PlannerBridge, monitor_config_for
        from edgeweave.control.wiring import FleetController

        name = fleet or (adapter.base.name if adapter is not None else "default")
        cfg = monitor_config_for(adapter) if adapter is not None else None
        monitor = FleetMonitor.over(name, mqtt=mqtt, auth=mqtt_auth, mdns=mdns,
                                    config=cfg).start()
        stack.closers.append(monitor.stop)
        FleetController(monitor, coord, PlannerBridge(adapter) if adapter is not None else None)
    return stack


def discover(model: str, mqtt: str | None, *, fleet: str | None = None,
             fleet_file: str | Path | None = None, tls_dir: str | Path | None = None,
             objective: str = "latency", choice: EngineChoice | None = None,
             adapters: Sequence[AdapterSpec] = (), policy: PolicyOptions | None = None,
             prefix_bytes: int = DEFAULT_BUDGET_MB << 20,
             options: DiscoveryOptions | None = None, auth: BrokerAuth | None = None,
             mdns: MdnsOptions | None = None) -> ServeStack:
    """Serve over the nodes that announce themselves on the broker at ``mqtt`` (or over
    DNS-SD with ``mdns``)."""
    from edgeweave.control.assemble import FleetAssembler, make_fleet_adapter
    from edgeweave.control.discovered import read_overlay
    from edgeweave.control.events import MonitorConfig
    from edgeweave.control.monitor import FleetMonitor
    from edgeweave.control.planner import PlannerBridge
    from edgeweave.control.wiring import FleetController
    from edgeweave.runtime.launch import attach
    from edgeweave.security.tls import TLSFiles
    from edgeweave.serve.fleet_api import fleet_router

    choice = choice or EngineChoice()
    overlay = read_overlay(fleet_file) if fleet_file is not None else None
    name = fleet or (overlay.name if overlay is not None and overlay.name else "default")
    tls = TLSFiles.from_dir(tls_dir, "coordinator") if tls_dir is not None else None
    # the adapter's default battery marks (0.2 low, 0.3 high) as the monitor's thresholds
    monitor = FleetMonitor.over(name, mqtt=mqtt, auth=auth, mdns=mdns, config=MonitorConfig(
        battery_low=0.2, battery_hysteresis=0.1)).start()
    try:
        asm = FleetAssembler(monitor, ca_pem=tls.ca.read_bytes() if tls else None,
                             overlay=overlay, options=options)
        adapter = make_fleet_adapter(model, asm.wait(), objective, policy)
        dep = attach(adapter.plan, model, {d: a.address for d, a in asm.admitted.items()},
                     tls=tls, backend=choice.backend, prefix_cache_bytes=prefix_bytes,
                     batch_invariant=choice.batch_invariant)
        coord = dep.coordinator
        sessions = CoordinatorSessions(coord, dep.tokenizer, model_id=Path(model).name)
        try:
            sessions.add_adapters(adapters)
        except BaseException:
            sessions.close()
            raise
        asm.install(coord, adapter)
        FleetController(monitor, coord, asm.members_only(PlannerBridge(adapter)))
    except BaseException:
        monitor.stop()
        raise
    return ServeStack(sessions, [monitor.stop], [fleet_router(asm)], asm)
