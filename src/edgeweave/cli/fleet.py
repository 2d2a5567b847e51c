"""``edgeweave fleet status --mqtt HOST:PORT``: the nodes on a broker and the served plan
(``--discover mdns``: the nodes announced on the LAN; the plan is the server's ``/v1/fleet``)."""

from __future__ import annotations

import json
from typing import Any

import typer

from edgeweave.cli.common import (
    console,
    discover_option,
    mdns_interface_option,
    mqtt_ca_option,
    mqtt_password_file_option,
    mqtt_user_option,
    table,
)


def fleet_status(mqtt: str | None, fleet: str = "default", auth: Any = None,
                 listen_s: float = 2.5, mdns: Any = None) -> dict[str, Any]:
    """What the broker knows: every node's announcement and liveness (heard for
    ``listen_s``) and the retained status of the server serving the fleet, if any. With
    ``mdns`` (``control.mdns.MdnsOptions``) the nodes announced on the LAN; no server
    status (``/v1/fleet`` on the server serves it)."""
    import time

    from edgeweave.control.announce import Announcement
    from edgeweave.control.monitor import FleetMonitor
    from edgeweave.control.snapshot import read_status
    from edgeweave.errors import ConfigError

    if mqtt is None and mdns is None:
        raise ConfigError("fleet status needs --mqtt HOST:PORT (the fleet's broker) or "
                          "--discover mdns (the LAN)")
    with FleetMonitor.over(fleet, mqtt=mqtt, auth=auth, mdns=mdns) as monitor:
        wait = 0.0 if mqtt is None else min(listen_s, 2.0)
        server = read_status(mqtt, fleet, auth, timeout=wait) if mqtt is not None else None
        time.sleep(max(listen_s - wait, 0.5))  # heartbeats tell who is alive now
        nodes = []
        for d, n in sorted(monitor.nodes().items()):
            try:
                a = Announcement.from_profile(d, n.profile)
                desc = {"address": a.address, "class": a.device_class or "measured",
                        "zone": a.zone, "variants": list(a.variants),
                        "cert_sha256": a.fingerprint}
            except ConfigError as e:
                desc = {"error": str(e)}
            nodes.append({"device": d, "online": n.online, "heartbeats": n.heartbeats,
                          **desc, "peers": n.links})
    return {"fleet": fleet, "nodes": nodes, "server": server, "mdns": mdns is not None}


def _print(st: dict[str, Any]) -> None:
    console.print(f"fleet {st['fleet']}: {len(st['nodes'])} node(s) "
                  f"{'announced on the LAN' if st.get('mdns') else 'on the broker'}")
    rows = []
    for n in st["nodes"]:
        peers = ", ".join(f"{p} {m.get('rtt_s', 0) * 1e3:.2f} ms/{m.get('up_bps', 0) / 1e6:.0f} "
                          "Mbit/s" for p, m in sorted(n.get("peers", {}).items()))
        rows.append((n["device"], "online" if n["online"] else "offline",
                     n.get("address", n.get("error", "?")), n.get("class", "-"),
                     n.get("zone") or "-", (n.get("cert_sha256") or "-")[:16], peers or "-"))
    console.print(table("Nodes", ["device", "state", "address", "class", "zone",
                                  "cert sha256", "measured links (rtt / up)"], rows))
    srv = st["server"]
    if srv is None and st.get("mdns"):
        console.print("over mDNS no server status is kept: GET /v1/fleet on the server shows "
                      "its live plan")
        return
    if srv is None:
        console.print("no server has published a plan for this fleet (start `edgeweave serve "
                      "--mqtt ...`)")
        return
    plan = srv.get("plan") or {}
    console.print(table(f"Live plan ({plan.get('objective', '?')})",
                        ["stage", "device", "blocks", "variant", "codec"],
                        [(k, s["device"], f"[{s['blocks'][0]}, {s['blocks'][1]})", s["variant"],
                          s["codec"]) for k, s in enumerate(plan.get("stages", []))]))
    q = srv.get("predicted") or {}
    if "per_token_s" in q:
        console.print(f"predicted: {q['per_token_s'] * 1e3:.3g} ms/token, TTFT "
                      f"{(q.get('ttft_s') or 0) * 1e3:.3g} ms, "
                      f"{q.get('throughput_tps') or 0:.3g} tok/s pipelined, feasible "
                      f"{q.get('feasible')}")
    for r in srv.get("rejected", []):
        console.print(f"- ignored {r['device']}: {r['reason']}")
    for r in srv.get("replans", [])[-5:]:
        console.print(f"- re-plan on {r['device']} {r['trigger']}: {r['reason']}")


def register(app: typer.Typer) -> None:
    fleet_app = typer.Typer(help="The fleet on an MQTT broker.", no_args_is_help=True)
    app.add_typer(fleet_app, name="fleet")

    @fleet_app.command("status")
    def status_cmd(
        mqtt: str = typer.Option(None, "--mqtt", help="HOST:PORT of the fleet's broker."),
        fleet: str = typer.Option("default", "--fleet", help="Fleet name on the broker."),
        listen_s: float = typer.Option(2.5, "--listen", help="Seconds to listen for "
                                       "heartbeats."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
        mqtt_user: str = mqtt_user_option(),
        mqtt_password_file: str = mqtt_password_file_option(),
        mqtt_ca: str = mqtt_ca_option(),
        discover: str = discover_option(),
        mdns_interface: list[str] = mdns_interface_option(),
    ) -> None:
        """Members, their measurements, the live plan and its predicted cost."""
        from edgeweave.control.client import BrokerAuth
        from edgeweave.control.mdns import mdns_choice

        mdns = mdns_choice(discover, mqtt, mdns_interface)
        st = fleet_status(mqtt, fleet, BrokerAuth.from_options(mqtt_user, mqtt_password_file,
                                                               mqtt_ca), listen_s, mdns)
        if as_json:
            console.print_json(json.dumps(st, default=str))
        else:
            _print(st)
