"""Start a real uvicorn server (blocking for the CLI, or in a thread for tests/embedding)."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeweave.errors import ConfigError
from edgeweave.models.catalog import DEFAULT_MODEL
from edgeweave.netaddr import check_bindable, check_host, check_port
from edgeweave.runtime.adapters import adapter_specs
from edgeweave.runtime.local import EngineChoice
from edgeweave.runtime.prefix import DEFAULT_BUDGET_MB
from edgeweave.serve.backend import SessionFactory
from edgeweave.serve.config import ServeConfig

if TYPE_CHECKING:
    from edgeweave.control.assemble import DiscoveryOptions
    from edgeweave.control.client import BrokerAuth
    from edgeweave.control.mdns import MdnsOptions
    from edgeweave.runtime.drafts import Speculation
    from edgeweave.serve.deploy import PolicyOptions


@dataclass(frozen=True)
class ServerAddress:
    host: str = "127.0.0.1"
    port: int = 8000

    def __post_init__(self) -> None:
        check_host(self.host)
        check_port(self.port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _uvicorn_server(backend: SessionFactory, config: ServeConfig, address: ServerAddress,
                    log_level: str, routers: Sequence[Any] = ()):  # type: ignore[no-untyped-def]
    import uvicorn

    from edgeweave.serve.app import create_app

    app = create_app(backend, config)
    for r in routers:  # a deployment's own endpoints (/v1/fleet)
        app.include_router(r)
    return uvicorn.Server(uvicorn.Config(app, host=address.host, port=address.port,
                                         log_level=log_level, access_log=False, ws="none",
                                         timeout_graceful_shutdown=5))


def serve(model: str = DEFAULT_MODEL, *, host: str = "127.0.0.1", port: int = 8000,
          api_keys: tuple[str, ...] = (), config: ServeConfig | None = None,
          backend: SessionFactory | None = None, plan: str | None = None,
          nodes: tuple[str, ...] = (), tls_dir: str | None = None, mqtt: str | None = None,
          fleet: str | None = None, fleet_file: str | None = None, objective: str = "latency",
          log_level: str = "info", choice: EngineChoice | None = None,
          adapters: Mapping[str, str | Path] | None = None,
          policy: PolicyOptions | None = None,
          prefix_cache_mb: int = DEFAULT_BUDGET_MB,
          discovery: DiscoveryOptions | None = None,
          mqtt_auth: BrokerAuth | None = None, mdns: MdnsOptions | None = None,
          speculation: Speculation | None = None) -> None:
    """Serve ``model`` (in-process, or over ``plan``; see :mod:`edgeweave.serve.deploy`)
    until interrupted. A ready ``backend`` skips the loading. ``adapters`` maps a name to
    an adapter folder (``edgeweave finetune --out``): a request whose ``model`` is that name
    runs the adapter unmerged on the shared base. ``prefix_cache_mb`` bounds the prefix KV
    cache (0 disables it). ``mqtt`` without ``plan`` and ``nodes`` assembles the fleet from
    the nodes' announcements (``discovery``); ``mqtt_auth`` logs in to the broker; ``mdns``
    (``control.mdns.MdnsOptions``) hears them over DNS-SD instead, no broker.
    ``speculation`` (``runtime.drafts.Speculation``) drafts tokens in this process for the
    sessions to verify several at a time (speculative decoding)."""
    from edgeweave.serve.deploy import ServeStack, build

    cfg = config or ServeConfig(api_keys=api_keys)
    address = ServerAddress(host, port)  # validate before the slow model load
    check_bindable(address.host, address.port)
    specs = adapter_specs(adapters)
    if backend is not None and specs:
        raise ConfigError("pass adapters to the backend (LocalSessions.add_adapters), not "
                          "beside a ready backend")
    stack = ServeStack(backend) if backend is not None else build(
        model, plan=plan, nodes=nodes, tls_dir=tls_dir, mqtt=mqtt, fleet=fleet,
        fleet_file=fleet_file, objective=objective, choice=choice, adapters=specs,
        policy=policy, prefix_cache_mb=prefix_cache_mb, discovery=discovery,
        mqtt_auth=mqtt_auth, mdns=mdns, speculation=speculation)
    try:
        _uvicorn_server(stack.backend, cfg, address, log_level, stack.routers).run()
    finally:
        stack.close()


class BackgroundServer:
    """A uvicorn server on a thread; ``with BackgroundServer(...) as url:`` in tests."""

    def __init__(self, backend: SessionFactory, config: ServeConfig | None = None,
                 host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 routers: Sequence[Any] = ()) -> None:
        import socket

        if port == 0:  # pick a free port now, so the URL is known before start
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.address = ServerAddress(host, port)
        self.server = _uvicorn_server(backend, config or ServeConfig(), self.address, log_level,
                                      routers)
        self.thread = threading.Thread(target=self.server.run, name="edgeweave-uvicorn",
                                       daemon=True)

    @property
    def url(self) -> str:
        return self.address.url

    def start(self, timeout: float = 20.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"the server did not start on {self.url}: is the port free?")
            time.sleep(0.02)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
