"""The fleet on a broker as it is now, without serving: what ``edgeweave plan --mqtt`` plans
on and what ``edgeweave fleet status`` prints.

:func:`discover_plan` runs the server's own discovery (:class:`~edgeweave.control.assemble.
FleetAssembler`) and planner (:func:`~edgeweave.control.assemble.make_fleet_adapter`), so the
plan it prints is the one ``serve --mqtt`` would choose for the same announcements.
:func:`read_status` reads the retained status a running server publishes.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeweave.control.assemble import DiscoveryOptions, FleetAssembler, make_fleet_adapter
from edgeweave.control.client import BrokerAuth, connect, make_client
from edgeweave.control.discovered import DiscoveredFleet, read_overlay
from edgeweave.control.messages import server_topic
from edgeweave.control.monitor import FleetMonitor
from edgeweave.netaddr import parse_hostport
from edgeweave.types import Plan


@dataclass(frozen=True)
class DiscoveredPlan:
    plan: Plan
    discovered: DiscoveredFleet
    members: dict[str, Any]  # device -> Announcement
    rejected: dict[str, str]


def discover_plan(model: str, mqtt: str | None, *, fleet: str | None = None,
                  fleet_file: str | Path | None = None, tls_dir: str | Path | None = None,
                  objective: str = "latency", policy: Any = None,
                  options: DiscoveryOptions | None = None,
                  auth: BrokerAuth | None = None, mdns: Any = None) -> DiscoveredPlan:
    """``mdns`` (``control.mdns.MdnsOptions``) in place of ``mqtt``: the nodes on the LAN."""
    overlay = read_overlay(fleet_file) if fleet_file is not None else None
    name = fleet or (overlay.name if overlay is not None and overlay.name else "default")
    ca = None
    if tls_dir is not None:
        from edgeweave.security.tls import TLSFiles

        ca = TLSFiles.from_dir(tls_dir, "coordinator").ca.read_bytes()
    with FleetMonitor.over(name, mqtt=mqtt, auth=auth, mdns=mdns) as monitor:
        asm = FleetAssembler(monitor, ca_pem=ca, overlay=overlay, options=options)
        disc = asm.wait()
        adapter = make_fleet_adapter(model, disc, objective, policy)
        return DiscoveredPlan(adapter.plan, disc, dict(asm.admitted), dict(asm.rejected))


def read_status(mqtt: str, fleet: str = "default", auth: BrokerAuth | None = None,
                timeout: float = 3.0) -> dict[str, Any] | None:
    """The retained status of the server serving ``fleet`` (None: no server has published
    one, or not within ``timeout``)."""
    host, port = parse_hostport(mqtt, 1883, "--mqtt")
    topic = server_topic(fleet)
    got: list[dict[str, Any]] = []
    done = threading.Event()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        try:
            body = json.loads(msg.payload.decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return
        if isinstance(body, dict):
            got.append(body)
            done.set()

    client = make_client(f"edgeweave-status-{fleet}-{id(got):x}", auth)
    client.on_message = on_message
    connect(client, host, port, keepalive=10, timeout=timeout,
            on_connected=lambda c: c.subscribe(topic, qos=1))
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    return got[-1] if got else None
