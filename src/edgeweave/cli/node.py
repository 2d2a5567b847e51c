"""``edgeweave node``: serve block ranges of a model to a coordinator over gRPC."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("node")
    def node_cmd(
        model: str = typer.Option("smollm2-135m-instruct", "--model", "-m",
                                  help="Bundled name, HF folder or artifact folder."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
        port: int = typer.Option(0, "--port", "-p", help="0 picks a free port (printed)."),
        stage: list[str] = typer.Option([], "--stage", help="Preload blocks START:END "  # noqa: B008
                                        "(repeatable; the coordinator can load more)."),
        variant: str = typer.Option("fp32", "--variant", help="fp32, int8 or int4."),
        tls_dir: str = typer.Option(None, "--tls-dir", help="Folder from `edgeweave certs`: "
                                    "enables mutual TLS."),
        name: str = typer.Option("node", "--name", help="This node's certificate name."),
        memory_mb: int = typer.Option(4096, "--memory-mb", help="KV-cache cap; least recently "
                                      "used sessions are evicted beyond it."),
        threads: int = typer.Option(0, "--threads", help="Torch threads (0 = default)."),
        mqtt: str = typer.Option(None, "--mqtt", help="HOST:PORT of the fleet's MQTT broker: "
                                 "announce this node, heartbeat, telemetry, last will."),
        fleet: str = typer.Option("default", "--fleet", help="Fleet name on the broker."),
        telemetry_s: float = typer.Option(5.0, "--telemetry-s", help="Seconds between "
                                          "telemetry readings (with --mqtt)."),
        colocated: bool = typer.Option(False, "--colocated", help="Other nodes share this "
                                       "host's cores: use one BLAS thread while several "
                                       "sessions are active, all cores for a single one."),
    ) -> None:
        """Host stages of a pipeline; prints `EDGEWEAVE-NODE READY host:port` when serving."""
        import logging

        from edgeweave.runtime.launch import run_node
        from edgeweave.security.tls import TLSFiles

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        tls = TLSFiles.from_dir(tls_dir, name) if tls_dir else None
        run_node(model, host, port, tuple(stage), variant, tls, memory_mb, threads,
                 ready=lambda line: print(line, flush=True), mqtt=mqtt, device=name,
                 fleet=fleet, telemetry_s=telemetry_s, colocated=colocated)
