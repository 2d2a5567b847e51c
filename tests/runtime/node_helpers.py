"""Real gRPC stage nodes on 127.0.0.1 and a raw stream that can send any bytes to them."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from edgeweave.runtime.engines.base import EngineConfig
from edgeweave.runtime.engines.torch import TorchStageEngine
from edgeweave.runtime.stage import StageHost
from edgeweave.runtime.transport.frame import Frame
from edgeweave.runtime.transport.grpc_server import GRPC_OPTIONS, METHOD, serve
from edgeweave.types import Shard


@contextmanager
def running_node(model: Any, stages: tuple[tuple[int, int], ...] = ((0, 4),), tls: Any = None,
                 memory_cap_bytes: int = 4 << 30,
                 engine: type[TorchStageEngine] = TorchStageEngine
                 ) -> Iterator[tuple[StageHost, str]]:
    """A node serving ``stages`` of the in-memory ``model``; yields ``(host, "127.0.0.1:P")``."""
    host = StageHost("mem", memory_cap_bytes)
    n = model.cfg.num_layers
    for start, end in stages:
        host.add_engine(engine(EngineConfig("mem", Shard(start, end, n)), model=model))
    server, port = serve(host, "127.0.0.1:0", tls)
    try:
        yield host, f"127.0.0.1:{port}"
    finally:
        server.stop(0)


class RawStream:
    """One bidirectional stream to a node carrying raw bytes, malformed frames included.

    The node answers requests on a stream in order, one each, so :meth:`ask` reads the
    answer to what it sent. A broken stream raises ``grpc.RpcError``; ``timeout`` bounds the
    whole stream so a hung node fails the test instead of hanging it."""

    def __init__(self, address: str, tls: Any = None, timeout: float = 120.0) -> None:
        import grpc

        if tls is not None:
            self.channel = grpc.secure_channel(address, tls.channel_credentials(),
                                               options=GRPC_OPTIONS + tls.channel_options())
        else:
            self.channel = grpc.insecure_channel(address, options=GRPC_OPTIONS)
        self._out: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        call = self.channel.stream_stream(METHOD)
        self._responses = call(iter(self._out.get, None), timeout=timeout)

    def ask_raw(self, raw: bytes) -> bytes:
        self._out.put(raw)
        return next(self._responses)

    def ask(self, frame: Frame | bytes) -> Frame:
        return Frame.unpack(self.ask_raw(frame if isinstance(frame, bytes) else frame.pack()))

    def close(self) -> None:
        self._out.put(None)
        self.channel.close()

    def __enter__(self) -> RawStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
