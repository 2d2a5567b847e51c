"""``edgeweave serve``: an OpenAI-compatible HTTP server for one model.

The options are defined below in groups (what runs, where it listens and who may call, what
one request may ask, a plan over nodes, the control plane), one small function each, so an
option is one definition and one parameter of :func:`serve_cmd`; the engine, policy and
broker-login options are shared with other verbs (``cli.common``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from edgeweave.cli.common import (
    backend_option,
    batch_invariant_option,
    discover_option,
    draft_k_option,
    draft_option,
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

if TYPE_CHECKING:
    from pathlib import Path

    from edgeweave.serve.config import ServeConfig


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)


# -- what runs: the model, its adapters, its caches, the embeddings model ------------------
def _model_option() -> Any:
    return typer.Option(DEFAULT_MODEL, "--model", "-m",
                        help="Bundled name, HF folder or .gguf file.")


def _embeddings_option() -> Any:
    return typer.Option(True, "--embeddings/--no-embeddings",
                        help="Serve /v1/embeddings with the bundled all-MiniLM-L6-v2 (loaded "
                             "on first use).")


def _adapter_option() -> Any:
    return typer.Option(None, "--adapter",
                        help="NAME=DIR: serve the LoRA adapter in DIR (edgeweave finetune "
                             "--out) unmerged; a request selects it with model=NAME "
                             "(repeatable).")


def _prefix_cache_option() -> Any:
    return typer.Option(DEFAULT_BUDGET_MB, "--prefix-cache-mb",
                        help="MiB of prompt-prefix KV cache: prompts that start alike "
                             "(instructions, demonstrations) skip recomputing it; 0 disables "
                             "it.")


# -- where it listens and who may call --------------------------------------------------
def _host_option() -> Any:
    return typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback by default).")


def _port_option() -> Any:
    return typer.Option(8000, "--port", "-p")


def _api_key_option() -> Any:
    return typer.Option(None, "--api-key", envvar="EDGEWEAVE_API_KEY",
                        help="Accepted Bearer key (repeatable; or $EDGEWEAVE_API_KEY, or "
                             "--api-key-file, which keep it out of `ps`); none = open.")


def _api_key_file_option() -> Any:
    return typer.Option(None, "--api-key-file", help="File of accepted Bearer keys, one a line.")


# -- what one request may ask ------------------------------------------------------------
def _max_concurrent_option() -> Any:
    return typer.Option(32, "--max-concurrent", help="Active sessions; one more gets HTTP 429.")


def _max_prompt_tokens_option() -> Any:
    return typer.Option(1024, "--max-prompt-tokens")


def _max_tokens_limit_option() -> Any:
    return typer.Option(512, "--max-tokens-limit",
                        help="The most tokens one request may ask for.")


def _max_body_bytes_option() -> Any:
    return typer.Option(1 << 20, "--max-body-bytes",
                        help="Larger request bodies get HTTP 413 unread.")


# -- a plan over stages, embedded or on running nodes ------------------------------------
def _plan_option() -> Any:
    return typer.Option(None, "--plan",
                        help="Plan JSON: serve through a coordinator over its stages.")


def _node_option() -> Any:
    return typer.Option(None, "--node",
                        help="DEVICE=HOST:PORT of a running `edgeweave node` (repeatable); "
                             "without any, the plan's stages run embedded.")


def _tls_dir_option() -> Any:
    return typer.Option(None, "--tls-dir",
                        help="Fleet certificates (edgeweave certs) for mutual TLS.")


def _fleet_file_option() -> Any:
    return typer.Option(None, "--fleet-file",
                        help="Fleet YAML: re-plan on fleet events (with --mqtt); without "
                             "--plan, serve the planner's placement.")


def _objective_option() -> Any:
    return typer.Option("latency", "--objective", help="Planner objective with --fleet-file.")


# -- the control plane: the broker, discovery of the nodes, the fleet's name -------------
def _mqtt_option() -> Any:
    return typer.Option(None, "--mqtt",
                        help="HOST:PORT of the MQTT broker. Alone (no --plan, no --node): "
                             "serve over the nodes that announce themselves there (`edgeweave "
                             "node --mqtt`); with a plan: fail over on last wills.")


def _min_nodes_option() -> Any:
    return typer.Option(1, "--min-nodes",
                        help="With --mqtt or --discover mdns alone: serve once this many nodes "
                             "are admitted "
                             "(later ones join by re-planning).")


def _discover_wait_option() -> Any:
    return typer.Option(60.0, "--discover-wait",
                        help="With --mqtt or --discover mdns alone: seconds to wait for "
                             "--min-nodes nodes.")


def _fleet_option() -> Any:
    return typer.Option(None, "--fleet",
                        help="Fleet name on the broker (default: the fleet file's).")


def serve_cmd(
    model: str = _model_option(), host: str = _host_option(), port: int = _port_option(),
    api_key: list[str] | None = _api_key_option(), api_key_file: str = _api_key_file_option(),
    max_concurrent: int = _max_concurrent_option(),
    max_prompt_tokens: int = _max_prompt_tokens_option(),
    max_tokens_limit: int = _max_tokens_limit_option(),
    max_body_bytes: int = _max_body_bytes_option(),
    plan: str = _plan_option(), node: list[str] | None = _node_option(),
    tls_dir: str = _tls_dir_option(),
    mqtt: str = _mqtt_option(), min_nodes: int = _min_nodes_option(),
    discover_wait: float = _discover_wait_option(),
    mqtt_user: str = mqtt_user_option(), mqtt_password_file: str = mqtt_password_file_option(),
    mqtt_ca: str = mqtt_ca_option(),
    discover: str = discover_option(), mdns_interface: list[str] = mdns_interface_option(),
    fleet_file: str = _fleet_file_option(), objective: str = _objective_option(),
    keep_in: str = keep_in_option(), hidden_states: bool = hidden_states_option(),
    max_cost: float = max_cost_option(), fleet: str = _fleet_option(),
    embeddings: bool = _embeddings_option(), adapter: list[str] | None = _adapter_option(),
    prefix_cache_mb: int = _prefix_cache_option(),
    backend: str = backend_option(), variant: str = variant_option(),
    threads: int = threads_option(), draft: str = draft_option(), draft_k: int = draft_k_option(),
    batch_invariant: bool = batch_invariant_option(),
) -> None:
    """Serve /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, /health
    and /metrics."""
    _prepare_process(threads)  # before numpy/onnxruntime load
    from edgeweave.control.assemble import DiscoveryOptions
    from edgeweave.control.client import BrokerAuth
    from edgeweave.control.mdns import mdns_choice
    from edgeweave.runtime.drafts import Speculation
    from edgeweave.runtime.local import EngineChoice
    from edgeweave.serve.deploy import PolicyOptions
    from edgeweave.serve.server import ServerAddress, serve

    discovery = DiscoveryOptions(min_nodes, discover_wait)
    auth = BrokerAuth.from_options(mqtt_user, mqtt_password_file, mqtt_ca)
    mdns = mdns_choice(discover, mqtt, mdns_interface)  # --discover mdns: no broker
    cfg = _serve_config(api_key, api_key_file, max_concurrent, max_prompt_tokens,
                        max_tokens_limit, max_body_bytes, embeddings)
    ServerAddress(host, port)  # a bad address fails before the warning and the load
    choice = EngineChoice(backend, variant, threads, batch_invariant)
    speculation = Speculation.from_options(draft, draft_k)
    specs = _adapter_folders(adapter or [])
    _warn_if_open(host, cfg)
    serve(model, host=host, port=port, config=cfg, plan=plan, nodes=tuple(node or ()),
          tls_dir=tls_dir, mqtt=mqtt, fleet=fleet, fleet_file=fleet_file,
          objective=objective, choice=choice, adapters=specs,
          policy=PolicyOptions(keep_in, hidden_states, max_cost),
          prefix_cache_mb=prefix_cache_mb, discovery=discovery, mqtt_auth=auth, mdns=mdns,
          speculation=speculation)


def _prepare_process(threads: int) -> None:
    """The serving process's threads and wait policy, then its logging (joins, re-plans)."""
    from edgeweave.runtime.policy import ProcessPolicy

    ProcessPolicy.for_this_process(threads=threads).apply()
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("edgeweave.control").setLevel(logging.INFO)


def _serve_config(api_key: list[str] | None, api_key_file: str | None, max_concurrent: int,
                  max_prompt_tokens: int, max_tokens_limit: int, max_body_bytes: int,
                  embeddings: bool) -> ServeConfig:
    """The HTTP layer's keys and request limits."""
    from edgeweave.serve.config import ServeConfig, read_api_key_file

    keys = tuple(api_key or ()) + (read_api_key_file(api_key_file) if api_key_file else ())
    return ServeConfig(api_keys=keys, max_concurrent=max_concurrent,
                       max_prompt_tokens=max_prompt_tokens, max_tokens_limit=max_tokens_limit,
                       default_max_tokens=min(128, max_tokens_limit),
                       max_body_bytes=max_body_bytes, embeddings=embeddings)


def _adapter_folders(options: list[str]) -> dict[str, Path]:
    """``--adapter NAME=DIR`` options as name -> folder, refusing a name given twice."""
    from edgeweave.errors import ConfigError
    from edgeweave.runtime.adapters import AdapterSpec

    specs = {s.name: s.folder for s in map(AdapterSpec.parse, options)}
    if len(specs) != len(options):
        raise ConfigError("two --adapter options share a name: give each its own")
    return specs


def _warn_if_open(host: str, cfg: ServeConfig) -> None:
    if not cfg.api_keys and host not in ("127.0.0.1", "localhost", "::1"):
        typer.secho(f"warning: serving on {host} without --api-key", err=True,
                    fg=typer.colors.YELLOW)
