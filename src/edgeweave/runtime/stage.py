"""StageServer: a node hosting block ranges of a model, one KV cache per session.

:class:`StageHost` is transport-free: it turns a request :class:`Frame` into a response frame
(schema in ``runtime.transport.frame``). The in-process transport calls it directly; the
gRPC server (:func:`serve`) exposes it as one bidirectional stream method
``/edgeweave.Stage/Stream`` whose messages are packed frames. Requests on one stream are
answered in order, one at a time, so a coordinator multiplexes all its sessions over a single
stream per node.

Memory: every session's cache counts against ``memory_cap_bytes``; opening a session that
does not fit evicts the least recently used sessions first (the coordinator replays an evicted
session when it comes back, see ``SESSION_MISSING``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

from edgeweave.errors import EdgeweaveError
from edgeweave.runtime import codec as codecs
from edgeweave.runtime.engines.base import EngineConfig, SessionNotFound, StageEngine, create_engine
from edgeweave.runtime.fast import ColocatedThreads
from edgeweave.runtime.transport.frame import ErrorCode, Frame, Op, error
from edgeweave.types import Shard

log = logging.getLogger(__name__)

SERVICE = "edgeweave.Stage"
METHOD = f"/{SERVICE}/Stream"
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 256 << 20),
    ("grpc.max_receive_message_length", 256 << 20),
    ("grpc.keepalive_time_ms", 2000),  # dead peers surface within seconds, not minutes
    ("grpc.keepalive_timeout_ms", 2000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 1000),
]


class StageHost:
    """Stages (engines) of one node plus LRU session accounting under a memory cap."""

    def __init__(self, model: str = "", memory_cap_bytes: int = 4 << 30, threads: int = 0,
                 engine_factory: Callable[[EngineConfig], StageEngine] = create_engine,
                 colocated: ColocatedThreads | None = None) -> None:
        self.model = model
        self.colocated = colocated  # set when other nodes share this host's cores
        self.memory_cap_bytes = memory_cap_bytes
        self.threads = threads
        self.engines: dict[str, StageEngine] = {}
        self._factory = engine_factory
        self._lru: OrderedDict[tuple[str, str], int] = OrderedDict()  # (stage, session) -> bytes
        self._lock = threading.Lock()
        self.evictions = 0

    # -- stages -------------------------------------------------------------------------
    def load(self, config: EngineConfig) -> StageEngine:
        if config.key not in self.engines:
            t0 = time.perf_counter()
            self.engines[config.key] = self._factory(config)
            log.info("loaded stage %s of %s in %.1f s", config.key, config.model,
                     time.perf_counter() - t0)
        return self.engines[config.key]

    def add_engine(self, engine: StageEngine) -> None:
        self.engines[engine.config.key] = engine

    def info(self) -> dict[str, Any]:
        return {"model": self.model, "stages": sorted(self.engines),
                "sessions": len(self._lru), "memory_bytes": sum(self._lru.values()),
                "memory_cap_bytes": self.memory_cap_bytes, "evictions": self.evictions,
                "blas_threads": self.colocated.current if self.colocated else None}

    # -- sessions -----------------------------------------------------------------------
    def _open(self, engine: StageEngine, session: str, max_len: int) -> None:
        key = (engine.config.key, session)
        engine.open(session, max_len)
        need = self._lru[key] = engine.session_bytes(session)
        self._lru.move_to_end(key)
        used = sum(self._lru.values())
        for victim in list(self._lru):
            if used <= self.memory_cap_bytes or victim == key:
                break
            used -= self._lru.pop(victim)
            self.engines[victim[0]].close(victim[1])
            self.evictions += 1
            log.info("evicted session %s of stage %s (memory cap)", victim[1], victim[0])
        if used > self.memory_cap_bytes:
            self._close(engine, session)
            raise _Refused(ErrorCode.MEMORY, f"a session of {max_len} tokens needs "
                           f"{need} bytes but the node's cap is "
                           f"{self.memory_cap_bytes}: lower max_len or raise --memory-mb")

    def _close(self, engine: StageEngine, session: str) -> None:
        engine.close(session)
        self._lru.pop((engine.config.key, session), None)

    # -- the request handler ------------------------------------------------------------
    def handle(self, req: Frame) -> Frame:
        with self._lock:
            try:
                return self._handle(req)
            except _Refused as e:
                return error(req, e.message, e.code)
            except SessionNotFound as e:
                return error(req, str(e), ErrorCode.SESSION_MISSING)
            except EdgeweaveError as e:
                return error(req, str(e))
            except Exception as e:  # a node must answer, not die, on one bad request
                log.exception("stage request failed")
                return error(req, f"{type(e).__name__}: {e}")

    def _engine(self, req: Frame) -> StageEngine:
        try:
            return self.engines[req.stage]
        except KeyError:
            raise _Refused(ErrorCode.NO_STAGE, f"this node hosts {sorted(self.engines)}, not "
                           f"stage {req.stage!r}: LOAD it first") from None

    def _handle(self, req: Frame) -> Frame:
        ok = Frame(Op.OK, req.stage, req.session, req.seq)
        if req.op == Op.FORWARD:
            engine = self._engine(req)
            have = engine.length(req.session)
            if have != req.arg:
                raise _Refused(ErrorCode.OUT_OF_SYNC, f"session {req.session!r} holds {have} "
                               f"tokens at stage {req.stage}, the coordinator expected {req.arg}")
            x = codecs.get(req.codec).decode(req.payload, req.shape)
            if self.colocated is not None:
                self.colocated.observe(req.session)
            t0 = time.perf_counter()
            y = engine.forward(req.session, x)
            ok.arg = min(int((time.perf_counter() - t0) * 1e6), 2**32 - 1)
            self._lru.move_to_end((req.stage, req.session))
            out = codecs.get(req.reply_codec)
            ok.codec, ok.shape, ok.payload = out.id, tuple(y.shape), out.encode(y)
        elif req.op == Op.OPEN:
            self._open(self._engine(req), req.session, req.arg)
        elif req.op == Op.TRUNCATE:
            self._engine(req).truncate(req.session, req.arg)
        elif req.op == Op.CLOSE:
            if req.stage:
                self._close(self._engine(req), req.session)
            else:  # every stage of this node
                for engine in self.engines.values():
                    self._close(engine, req.session)
        elif req.op == Op.LOAD:
            spec = req.json()
            cfg = EngineConfig(model=spec.get("model") or self.model, shard=Shard(**spec["shard"]),
                               variant=spec.get("variant", "fp32"),
                               backend=spec.get("backend", "torch"), threads=self.threads)
            self.load(cfg)
            ok.stage, ok.payload = cfg.key, Frame.json_bytes(asdict(cfg))
        elif req.op == Op.INFO:
            ok.payload = Frame.json_bytes(self.info())
        elif req.op != Op.PING:
            raise _Refused(ErrorCode.BAD_FRAME, f"unsupported request op {req.op!r}")
        return ok

    def handle_bytes(self, raw: bytes) -> bytes:
        try:
            req = Frame.unpack(raw)
        except (EdgeweaveError, ValueError) as e:
            return error(Frame(Op.ERROR), str(e), ErrorCode.BAD_FRAME).pack()
        return self.handle(req).pack()


class _Refused(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def serve(host: StageHost, address: str = "127.0.0.1:0", tls: Any = None,
          max_workers: int = 16) -> tuple[Any, int]:
    """Start a gRPC server for ``host``; returns ``(server, port)``. ``tls`` is a
    ``security.tls.TLSFiles`` (mutual TLS) or None (plaintext, loopback only)."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    def stream(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        for raw in requests:
            yield host.handle_bytes(raw)

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Stream": grpc.stream_stream_rpc_method_handler(stream)})
    server = grpc.server(ThreadPoolExecutor(max_workers=max_workers), handlers=[handler],
                         options=GRPC_OPTIONS)
    port = (server.add_secure_port(address, tls.server_credentials()) if tls is not None
            else server.add_insecure_port(address))
    server.start()
    return server, port
