"""Ways to get a :class:`~edgeweave.runtime.deployment.Deployment` (a coordinator, the
model's tokenizer and what runs the stages): embedded, attached to running nodes, or launched.

* :func:`embedded` — every stage in this process behind in-process links (the default: no
  network, no processes, the model loaded once and shared by the stages).
* :func:`attach` — nodes already running (``edgeweave node``) at known addresses.
* :func:`launch` — start one ``edgeweave node`` process per device of the plan on this host
  (loopback), then attach; the deployment's ``close()`` stops them.

:func:`run_node` is the plain function behind ``edgeweave node``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edgeweave.errors import ConfigError, RuntimeStageError
from edgeweave.models.catalog import DEFAULT_MODEL
from edgeweave.runtime.coordinator import Coordinator
from edgeweave.runtime.deployment import Deployment, stop_processes
from edgeweave.types import Plan, Shard

if TYPE_CHECKING:
    from edgeweave.models.tokenizer import Tokenizer
    from edgeweave.runtime.transport.base import Link

READY = "EDGEWEAVE-NODE READY"


def _tokenizer(model: str) -> Tokenizer:
    from edgeweave.runtime.local import tokenizer_for

    return tokenizer_for(model)


def _n_layers(model: str) -> int:
    from edgeweave.runtime.local import n_layers

    return n_layers(model)


def embedded(model: str = DEFAULT_MODEL, plan: Plan | None = None, *,
             loaded: Any = None, memory_cap_bytes: int = 8 << 30, backend: str = "",
             **kw: Any) -> Deployment:
    """All stages of ``plan`` (default: the whole model as one stage of the default variant)
    in this process, on ``backend`` (default: ONNX Runtime where installed).

    ``loaded`` is an already loaded ``LoadedModel`` (or a bare ``BlockModel``) that fp32
    torch stages share; other stages are built by their engines (ONNX from cached exports,
    without torch).
    """
    from edgeweave.runtime.engines.base import create_engine
    from edgeweave.runtime.local import DEFAULT_VARIANT, default_backend
    from edgeweave.runtime.stage import StageHost
    from edgeweave.runtime.transport.inproc import InProcessLink

    backend = backend or default_backend()
    if plan is None:
        plan = Plan.single(_n_layers(model), "local",
                           DEFAULT_VARIANT if backend == "onnx" else "fp32")
    shared: dict[str, Any] = {}

    def block_model() -> Any:  # loaded once, only if an fp32 torch stage needs it
        if "model" not in shared:
            lm = loaded
            if lm is None:
                from edgeweave.models import load

                lm = load(model)
            shared["model"] = getattr(lm, "model", lm)
        return shared["model"]

    def factory(cfg):  # noqa: ANN001, ANN202
        if cfg.backend == "torch" and cfg.variant == "fp32":
            from edgeweave.runtime.engines.torch import TorchStageEngine

            return TorchStageEngine(cfg, model=block_model())
        return create_engine(cfg)

    hosts: dict[str, StageHost] = {}

    def connect(device: str) -> InProcessLink:
        host = hosts.setdefault(device, StageHost(model, memory_cap_bytes, engine_factory=factory))
        return InProcessLink(host, f"inproc:{device}")

    tok = getattr(loaded, "tokenizer", None)  # a bare BlockModel has none
    tok = tok if tok is not None else _tokenizer(model)  # before any stage loads
    return Deployment(Coordinator(plan, model, connect, backend=backend, **kw), tok, hosts)


def attach(plan: Plan, model: str, addresses: Mapping[str, str], *, tls: Any = None,
           connect_timeout: float = 10.0, tokenizer: Tokenizer | Literal["auto"] | None = "auto",
           backend: str = "", **kw: Any) -> Deployment:
    """Coordinator over running nodes; ``addresses`` maps each device to ``host:port``. The
    coordinator tells each node which ``backend`` (default: ONNX Runtime) and variant to
    load for its stages.

    ``tokenizer="auto"`` loads the model's tokenizer here (``deployment.tokenizer``); None
    loads none (a coordinator that only steps token ids)."""
    from edgeweave.runtime.local import default_backend
    from edgeweave.runtime.transport.dial import dial

    missing = sorted({s.device for s in plan.stages} - set(addresses))
    if missing:
        raise ConfigError(f"no address for device(s) {', '.join(missing)}: pass host:port for "
                          "every device of the plan")
    addrs = dict(addresses)  # shared with coordinator.addresses, so add_device() extends it

    def connect(device: str) -> Link:
        if device not in addrs:
            raise ConfigError(f"device {device!r} has no known address: "
                              "call coordinator.add_device(device, 'host:port') first")
        return dial(addrs[device], tls, connect_timeout)

    tok = _tokenizer(model) if isinstance(tokenizer, str) else tokenizer  # before any load
    coord = Coordinator(plan, model, connect, addresses=addrs,
                        backend=backend or default_backend(), **kw)
    return Deployment(coord, tok, addresses=addrs)


def node_command(model: str, *, port: int = 0, stages: tuple[Shard, ...] = (),
                 variant: str = "int4", tls_dir: str | Path | None = None, name: str = "",
                 threads: int = 0, memory_mb: int = 0, colocated: bool = False,
                 backend: str = "") -> list[str]:
    cmd = [sys.executable, "-c", "from edgeweave.cli.app import entry; entry()", "node",
           "--model", model, "--host", "127.0.0.1", "--port", str(port), "--variant", variant]
    if backend:
        cmd += ["--backend", backend]
    for sh in stages:
        cmd += ["--stage", f"{sh.start}:{sh.end}"]
    if tls_dir is not None:
        cmd += ["--tls-dir", str(tls_dir), "--name", name]
    if threads:
        cmd += ["--threads", str(threads)]
    if memory_mb:
        cmd += ["--memory-mb", str(memory_mb)]
    if colocated:
        cmd.append("--colocated")
    return cmd


def spawn_node(cmd: list[str], log: Path,
               env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``edgeweave node`` as a user would: the node sets its own threads and wait
    policy (``runtime.policy``), so nothing is added to its environment here."""
    full_env = {**os.environ, **(env or {})}
    with open(log, "wb") as err:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=full_env)


def wait_ready(proc: subprocess.Popen[bytes], log: Path, timeout: float = 120.0) -> str:
    """Wait for a spawned node's ready line; returns its ``host:port``."""
    found: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            text = line.decode(errors="replace").strip()
            if text.startswith(READY):
                found.append(text.split()[-1])
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    if not found:
        stop_processes([proc])
        raise RuntimeStageError(f"node did not start within {timeout:.0f} s; its log: "
                                f"{log.read_text(errors='replace')[-2000:]}")
    return found[0]


def launch(plan: Plan, model: str, *, tls_dir: str | Path | None = None,
           coordinator_name: str = "coordinator", threads: int = 0, log_dir: Path | None = None,
           env: Mapping[str, str] | None = None, backend: str = "", **kw: Any
           ) -> Deployment:
    """Start one node per device of ``plan`` on 127.0.0.1 (preloading its stages) and attach.

    With ``tls_dir`` (from ``edgeweave certs``), nodes use ``<device>.pem`` and the
    coordinator ``<coordinator_name>.pem``: mutual TLS on every channel.
    """
    from edgeweave.security.tls import TLSFiles

    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="edgeweave-nodes-"))
    devices = list(dict.fromkeys(s.device for s in plan.stages))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    addrs: dict[str, str] = {}
    logs: dict[str, Path] = {}
    try:
        for d in devices:
            shards = tuple(s.shard for s in plan.stages if s.device == d)
            variant = next(s.variant for s in plan.stages if s.device == d)
            logs[d] = log_dir / f"{d}.log"
            cmd = node_command(model, stages=shards, variant=variant, tls_dir=tls_dir, name=d,
                               threads=threads, colocated=True, backend=backend)  # one host
            procs[d] = spawn_node(cmd, logs[d], env)  # all start (and load) in parallel
        for d in devices:
            addrs[d] = wait_ready(procs[d], logs[d])
        tls = TLSFiles.from_dir(tls_dir, coordinator_name) if tls_dir is not None else None
        attached = attach(plan, model, addrs, tls=tls, backend=backend, **kw)
    except BaseException:
        stop_processes(procs.values())
        raise
    return Deployment(attached.coordinator, attached.tokenizer, addresses=attached.addresses,
                      processes=procs, logs=logs)


def run_node(model: str, host: str = "127.0.0.1", port: int = 0, stages: tuple[str, ...] = (),
             variant: str = "int4", tls: Any = None, memory_mb: int = 4096, threads: int = 0,
             backend: str = "", ready: Callable[[str], None] | None = None,
             mqtt: str | None = None, device: str = "node", fleet: str = "default",
             telemetry_s: float | None = 5.0, colocated: bool = False,
             device_class: str | None = None, zone: str | None = None,
             mqtt_auth: Any = None, advertise: str | None = None,
             mdns: Any = None, frames_port: int = 0, batch_invariant: bool = False) -> None:
    """Serve stages of ``model`` until SIGTERM/SIGINT (the body of ``edgeweave node``).

    Frames travel on gRPC at ``host:port`` and on a plain TCP socket at ``frames_port`` of the
    same host (0: a free one; -1: none), which INFO announces and coordinators switch to
    (``transport.frame_socket``: a third of gRPC's per-frame time in Python).

    With ``mqtt`` (``HOST:PORT`` of the fleet's broker) the node also joins the control plane
    from this same process: it announces what a server needs to plan on it
    (``control.announce``: gRPC address, ``device_class`` or the host probe's figures,
    variant, battery, ``zone``, its certificate with ``tls``), measures the links to the
    peers it sees (``control.peers``), heartbeats and sends telemetry, and its last will
    fires when the process dies, so the coordinator fails over. ``mqtt_auth`` is a
    ``control.client.BrokerAuth`` (username/password, broker TLS); ``advertise`` the host
    others reach this node at (default: ``host``, or this host's name when it listens on
    every interface). ``mdns`` (a ``control.mdns.MdnsOptions``) instead of ``mqtt`` announces
    the same over DNS-SD on the LAN, no broker (``control.mdns``).
    """
    from edgeweave.runtime.local import EngineChoice
    from edgeweave.runtime.stage import StageHost
    from edgeweave.runtime.threads import ColocatedThreads, blas_threads
    from edgeweave.runtime.transport.grpc_server import serve

    choice = EngineChoice(backend, variant, threads, batch_invariant)  # checked before loading
    backend, variant = choice.backend, choice.variant
    if threads and backend == "torch":
        import torch

        torch.set_num_threads(threads)

    stage_host = StageHost(model, memory_mb << 20, threads,
                           colocated=ColocatedThreads(blas_threads()) if colocated else None)
    n = _n_layers(model) if stages else 0
    for spec in stages:
        try:
            start, end = (int(v) for v in spec.split(":"))
        except ValueError:
            raise ConfigError(f"--stage {spec!r} must look like START:END, e.g. 0:10") from None
        stage_host.load(choice.config(model, Shard(start, end, n)))
    server, bound = serve(stage_host, f"{host}:{port}", tls)
    if bound == 0:
        raise ConfigError(f"cannot listen on {host}:{port}: is the port taken?")
    frames = None
    if frames_port >= 0:
        from edgeweave.runtime.transport.frame_socket import FrameServer

        try:
            frames = FrameServer(stage_host, host, frames_port, tls)
        except Exception:
            server.stop(grace=0)
            raise
        stage_host.frames_port = frames.port
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    agent = prober = None
    if mqtt or mdns is not None:
        from edgeweave.control.announce import Announcement, measured_figures, read_cert
        from edgeweave.control.messages import Telemetry

        if advertise is None and host.strip("[]") in ("0.0.0.0", "::"):
            import socket

            advertise = socket.getfqdn()
        ann = Announcement(
            device, f"{advertise or host}:{bound}", (variant,), backend, device_class,
            {} if device_class else measured_figures(), Telemetry.sample().battery, zone,
            read_cert(tls), tuple(stages))
        agent, prober = _node_agent(mqtt, ann, fleet, telemetry_s, tls, mqtt_auth, mdns)
    (ready or print)(f"{READY} {host}:{bound}")
    try:
        while not stop.wait(0.5):  # a timed wait lets the signal handler run promptly
            pass
    finally:
        if prober is not None:
            prober.stop()
        if agent is not None:
            agent.stop()  # a clean goodbye: offline/clean instead of the will
        if frames is not None:
            frames.close()
        server.stop(grace=1.0).wait()


def _node_agent(mqtt: str | None, ann: Any, fleet: str, telemetry_s: float | None, tls: Any,
                auth: Any, mdns: Any = None) -> tuple[Any, Any]:
    from edgeweave.control.agent import NodeAgent, host_profile
    from edgeweave.control.peers import PeerProber
    from edgeweave.netaddr import parse_hostport

    profile = host_profile() | ann.to_profile()
    agent: Any
    if mdns is not None:
        from edgeweave.control.mdns import MdnsAgent

        agent = MdnsAgent(ann.device, fleet=fleet, profile=profile, telemetry_s=telemetry_s,
                          options=mdns)
    else:
        mhost, mport = parse_hostport(mqtt or "", flag="--mqtt")
        agent = NodeAgent(ann.device, mhost, mport, fleet=fleet, profile=profile,
                          telemetry_s=telemetry_s, auth=auth)
    prober = PeerProber(agent, tls)  # subscribes to the peers' profiles when it connects
    # an unreachable broker raises RuntimeStageError with the fix in its message
    agent.start()
    return agent, prober.start()
