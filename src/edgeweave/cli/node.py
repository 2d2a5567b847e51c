"""``edgeweave node``: serve block ranges of a model to a coordinator over gRPC."""

from __future__ import annotations

from dataclasses import dataclass

import typer

from edgeweave.cli.common import (
    backend_option,
    discover_option,
    mdns_interface_option,
    mqtt_ca_option,
    mqtt_password_file_option,
    mqtt_user_option,
)
from edgeweave.errors import ConfigError
from edgeweave.models.catalog import DEFAULT_MODEL
from edgeweave.netaddr import check_host


@dataclass(frozen=True)
class NodeOptions:
    """Where a node listens and what it may use, checked before anything loads (the CLI
    prints a bad value's one-line message and exits 2)."""

    host: str
    port: int
    memory_mb: int
    threads: int = 0
    frames_port: int = 0

    def __post_init__(self) -> None:
        check_host(self.host)
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port} is not in [0, 65535]: pass a free port, or 0 "
                              "to pick one (printed when the node is ready)")
        if not -1 <= self.frames_port <= 65535:
            raise ConfigError(f"--frames-port {self.frames_port} is not in [-1, 65535]: pass a "
                              "free port, 0 to pick one, or -1 to serve frames on gRPC only")
        if self.memory_mb <= 0:
            raise ConfigError(f"--memory-mb {self.memory_mb} must be a positive number of MiB "
                              "for the KV caches, e.g. 4096")
        if self.threads < 0:
            raise ConfigError(f"--threads {self.threads} must be >= 0 (0 = torch's default)")

    @property
    def bind_host(self) -> str:
        """The host as a gRPC address wants it: IPv6 literals in brackets (``[::1]``)."""
        host = self.host.strip("[]")
        return f"[{host}]" if ":" in host else host


def register(app: typer.Typer) -> None:
    @app.command("node")
    def node_cmd(
        model: str = typer.Option(DEFAULT_MODEL, "--model", "-m",
                                  help="Bundled name, HF folder or artifact folder."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
        port: int = typer.Option(0, "--port", "-p", help="0 picks a free port (printed)."),
        frames_port: int = typer.Option(0, "--frames-port", help="TCP port of the fast frame "
                                        "socket beside gRPC, announced to coordinators (0: a "
                                        "free one; -1: gRPC only)."),
        stage: list[str] = typer.Option([], "--stage", help="Preload blocks START:END "  # noqa: B008
                                        "(repeatable; the coordinator can load more)."),
        variant: str = typer.Option("int4", "--variant", help="Weights: int4 (default, built "
                                    "once and cached), int8, fp32, int4-sym, ..."),
        backend: str = backend_option(),
        tls_dir: str = typer.Option(None, "--tls-dir", help="Folder from `edgeweave certs`: "
                                    "enables mutual TLS."),
        name: str = typer.Option("node", "--name", help="This node's certificate name."),
        memory_mb: int = typer.Option(4096, "--memory-mb", help="KV-cache cap; least recently "
                                      "used sessions are evicted beyond it."),
        threads: int = typer.Option(0, "--threads", help="Compute threads (0 = every core "
                                    "this process may use)."),
        mqtt: str = typer.Option(None, "--mqtt", help="HOST:PORT of the fleet's MQTT broker: "
                                 "announce this node, heartbeat, telemetry, last will."),
        fleet: str = typer.Option("default", "--fleet", help="Fleet name (on the broker, or "
                                  "in the mDNS announcement)."),
        telemetry_s: float = typer.Option(5.0, "--telemetry-s", help="Seconds between "
                                          "telemetry readings (with --mqtt or --discover mdns)."),
        colocated: bool = typer.Option(False, "--colocated", help="Other nodes share this "
                                       "host's cores: torch stages use one BLAS thread while "
                                       "several sessions are active, all cores for a single "
                                       "one (ONNX Runtime's workers spin only while no "
                                       "other thread wants the cores, as in every process)."),
        device_class: str = typer.Option(None, "--device-class", help="Catalog device class "
                                         "announced to the planner (edgeweave profile lists "
                                         "them); default: this host's measured figures."),
        zone: str = typer.Option(None, "--zone", help="Data-residency zone announced with "
                                 "this node, e.g. home."),
        advertise: str = typer.Option(None, "--advertise", help="Host name or IP the server "
                                      "and peers reach this node at (default: --host)."),
        mqtt_user: str = mqtt_user_option(),
        mqtt_password_file: str = mqtt_password_file_option(),
        mqtt_ca: str = mqtt_ca_option(),
        discover: str = discover_option(),
        mdns_interface: list[str] = mdns_interface_option(),
        batch_invariant: bool = typer.Option(False, "--batch-invariant", help="Preload the "
                                             "--stage ranges as batch-invariant engines, what "
                                             "`edgeweave serve --batch-invariant` asks for "
                                             "(else it loads them a second time)."),
    ) -> None:
        """Host stages of a pipeline; prints `EDGEWEAVE-NODE READY host:port` when serving."""
        opts = NodeOptions(host, port, memory_mb, threads, frames_port)  # refused before anything loads
        from edgeweave.control.client import BrokerAuth
        from edgeweave.control.mdns import mdns_choice

        auth = BrokerAuth.from_options(mqtt_user, mqtt_password_file, mqtt_ca)
        mdns = mdns_choice(discover, mqtt, mdns_interface)
        if device_class is not None:
            from edgeweave.profile import catalog

            catalog.device(device_class)  # an unknown class fails now, with the choices
        if advertise is not None:
            check_host(advertise, "--advertise")
        from edgeweave.runtime.policy import ProcessPolicy

        # before numpy, torch or onnxruntime load: their thread pools read it when they do
        ProcessPolicy.for_this_process(colocated, threads).apply()
        import logging

        from edgeweave.runtime.launch import run_node
        from edgeweave.security.tls import TLSFiles

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        tls = TLSFiles.from_dir(tls_dir, name) if tls_dir else None
        run_node(model, opts.bind_host, port, tuple(stage), variant, tls, memory_mb, threads,
                 backend=backend, ready=lambda line: print(line, flush=True), mqtt=mqtt,
                 device=name,
                 fleet=fleet, telemetry_s=telemetry_s, colocated=colocated,
                 device_class=device_class, zone=zone, mqtt_auth=auth, advertise=advertise,
                 mdns=mdns, frames_port=frames_port, batch_invariant=batch_invariant)
