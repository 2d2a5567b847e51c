"""``edgeweave serve``: an OpenAI-compatible HTTP server for one model."""

from __future__ import annotations

from typing import Annotated

import typer

from edgeweave.cli.common import (
    backend_option,
    discover_option,
    hidden_states_option,
    keep_in_option,
    max_cost_option,
    mdns_interface_option,
    mqtt_ca_option,
    mqtt_password_file_option,
    mqtt_user_option,
    threads_option,
    variant_option,
)
from edgeweave.models.catalog import DEFAULT_MODEL
from edgeweave.runtime.prefix import DEFAULT_BUDGET_MB


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve_cmd(
        model: str = typer.Option(DEFAULT_MODEL, "--model", "-m",
                                  help="Bundled name, HF folder or .gguf file."),
        host: str = typer.Option("127.0.0.1", "--host",
                                 help="Address to listen on (loopback by default)."),
        port: int = typer.Option(8000, "--port", "-p"),
        api_key: Annotated[list[str] | None, typer.Option(
            "--api-key", envvar="EDGEWEAVE_API_KEY",
            help="Accepted Bearer key (repeatable; or $EDGEWEAVE_API_KEY, or --api-key-file, "
                 "which keep it out of `ps`); none = open.")] = None,
        api_key_file: str = typer.Option(None, "--api-key-file",
                                         help="File of accepted Bearer keys, one a line."),
        max_concurrent: int = typer.Option(32, "--max-concurrent",
                                           help="Active sessions; one more gets HTTP 429."),
        max_prompt_tokens: int = typer.Option(1024, "--max-prompt-tokens"),
        max_tokens_limit: int = typer.Option(512, "--max-tokens-limit",
                                             help="The most tokens one request may ask for."),
        max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes",
                                           help="Larger request bodies get HTTP 413 unread."),
        plan: str = typer.Option(None, "--plan",
                                 help="Plan JSON: serve through a coordinator over its stages."),
        node: Annotated[list[str] | None, typer.Option(
            "--node", help="DEVICE=HOST:PORT of a running `edgeweave node` (repeatable); "
                           "without any, the plan's stages run embedded.")] = None,
        tls_dir: str = typer.Option(None, "--tls-dir",
                                    help="Fleet certificates (edgeweave certs) for mutual TLS."),
        mqtt: str = typer.Option(None, "--mqtt",
                                 help="HOST:PORT of the MQTT broker. Alone (no --plan, no "
                                      "--node): serve over the nodes that announce themselves "
                                      "there (`edgeweave node --mqtt`); with a plan: fail over "
                                      "on last wills."),
        min_nodes: int = typer.Option(1, "--min-nodes", help="With --mqtt alone: serve once "
                                      "this many nodes are admitted (later ones join by "
                                      "re-planning)."),
        discover_wait: float = typer.Option(60.0, "--discover-wait", help="With --mqtt alone: "
                                            "seconds to wait for --min-nodes nodes."),
        mqtt_user: str = mqtt_user_option(),
        mqtt_password_file: str = mqtt_password_file_option(),
        mqtt_ca: str = mqtt_ca_option(),
        discover: str = discover_option(),
        mdns_interface: list[str] = mdns_interface_option(),
        fleet_file: str = typer.Option(None, "--fleet-file",
                                       help="Fleet YAML: re-plan on fleet events (with --mqtt); "
                                            "without --plan, serve the planner's placement."),
        objective: str = typer.Option("latency", "--objective",
                                      help="Planner objective with --fleet-file."),
        keep_in: str = keep_in_option(),
        hidden_states: bool = hidden_states_option(),
        max_cost: float = max_cost_option(),
        fleet: str = typer.Option(None, "--fleet",
                                  help="Fleet name on the broker (default: the fleet file's)."),
        embeddings: bool = typer.Option(
            True, "--embeddings/--no-embeddings",
            help="Serve /v1/embeddings with the bundled all-MiniLM-L6-v2 (loaded on first use)."),
        adapter: Annotated[list[str] | None, typer.Option(
            "--adapter", help="NAME=DIR: serve the LoRA adapter in DIR (edgeweave finetune "
                              "--out) unmerged; a request selects it with model=NAME "
                              "(repeatable).")] = None,
        prefix_cache_mb: int = typer.Option(
            DEFAULT_BUDGET_MB, "--prefix-cache-mb",
            help="MiB of prompt-prefix KV cache: prompts that start alike (instructions, "
                 "demonstrations) skip recomputing it; 0 disables it."),
        backend: str = backend_option(),
        variant: str = variant_option(),
        threads: int = threads_option(),
    ) -> None:
        """Serve /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, /health
        and /metrics."""
        from edgeweave.runtime.policy import ProcessPolicy

        ProcessPolicy.for_this_process(threads=threads).apply()  # before numpy/onnxruntime
        import logging

        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
        logging.getLogger("edgeweave.control").setLevel(logging.INFO)  # joins, re-plans
        from edgeweave.control.assemble import DiscoveryOptions
        from edgeweave.control.client import BrokerAuth
        from edgeweave.runtime.adapters import AdapterSpec
        from edgeweave.runtime.local import EngineChoice
        from edgeweave.serve.config import ServeConfig, read_api_key_file
        from edgeweave.serve.deploy import PolicyOptions
        from edgeweave.serve.server import ServerAddress, serve

        discovery = DiscoveryOptions(min_nodes, discover_wait)
        auth = BrokerAuth.from_options(mqtt_user, mqtt_password_file, mqtt_ca)
        from edgeweave.control.sources import mdns_choice

        mdns = mdns_choice(discover, mqtt, mdns_interface)  # --discover mdns: no broker
        keys = tuple(api_key or ()) + (read_api_key_file(api_key_file) if api_key_file else ())
        cfg = ServeConfig(api_keys=keys, max_concurrent=max_concurrent,
                          max_prompt_tokens=max_prompt_tokens, max_tokens_limit=max_tokens_limit,
                          default_max_tokens=min(128, max_tokens_limit),
                          max_body_bytes=max_body_bytes, embeddings=embeddings)
        ServerAddress(host, port)  # a bad address fails before the warning and the load
        choice = EngineChoice(backend, variant, threads)
        specs = {s.name: s.folder for s in map(AdapterSpec.parse, adapter or ())}
        if len(specs) != len(adapter or ()):
            from edgeweave.errors import ConfigError

            raise ConfigError("two --adapter options share a name: give each its own")
        if not keys and host not in ("127.0.0.1", "localhost", "::1"):
            typer.secho(f"warning: serving on {host} without --api-key", err=True,
                        fg=typer.colors.YELLOW)
        serve(model, host=host, port=port, config=cfg, plan=plan, nodes=tuple(node or ()),
              tls_dir=tls_dir, mqtt=mqtt, fleet=fleet, fleet_file=fleet_file,
              objective=objective, choice=choice, adapters=specs,
              policy=PolicyOptions(keep_in, hidden_states, max_cost),
              prefix_cache_mb=prefix_cache_mb, discovery=discovery, mqtt_auth=auth, mdns=mdns)
