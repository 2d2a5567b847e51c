"""gRPC link: one bidirectional stream per node carrying packed frames (optionally mTLS).

All sessions of a coordinator share the stream; responses are matched to requests by
``seq``, so many threads may wait on one node at once. A broken stream or a response past
its deadline raises :class:`StageUnavailable`, and the link stays broken (the coordinator
fails over instead of retrying a dead node).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from edgeweave.runtime.transport.base import StageUnavailable
from edgeweave.runtime.transport.frame import Frame
from edgeweave.runtime.transport.grpc_server import GRPC_OPTIONS, METHOD

_END = object()


class GrpcLink:
    parallel = True  # each node computes in its own process; answers match by seq

    def __init__(self, address: str, tls: Any = None, connect_timeout: float = 10.0) -> None:
        import grpc

        self.address = address
        if tls is not None:
            self._channel = grpc.secure_channel(address, tls.channel_credentials(),
                                                options=GRPC_OPTIONS + tls.channel_options())
        else:
            self._channel = grpc.insecure_channel(address, options=GRPC_OPTIONS)
        try:
            grpc.channel_ready_future(self._channel).result(timeout=connect_timeout)
        except grpc.FutureTimeoutError:
            self._channel.close()
            raise StageUnavailable(
                f"cannot reach stage node {address} within {connect_timeout:.0f} s: is it "
                "running, and does its certificate come from this fleet's CA?") from None
        self._seq = itertools.count(1)
        self._pending: dict[int, Future[Frame]] = {}
        self._lock = threading.Lock()
        self._out: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._broken: str | None = None
        call = self._channel.stream_stream(METHOD)  # no serializers: frames are bytes
        self._responses = call(iter(self._out.get, _END))
        self._reader = threading.Thread(target=self._read, name=f"grpc-link-{address}",
                                        daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for raw in self._responses:
                resp = Frame.unpack(raw)
                with self._lock:
                    fut = self._pending.pop(resp.seq, None)
                if fut is not None:
                    fut.set_result(resp)
            reason = "the node closed the stream"
        except Exception as e:  # grpc.RpcError when the node dies or the channel closes
            details = e.details() if hasattr(e, "details") else str(e)
            reason = f"{type(e).__name__}: {details}"
        self._fail(reason)

    def _fail(self, reason: str) -> None:
        with self._lock:
            self._broken = self._broken or reason
            pending, self._pending = self._pending, {}
        for fut in pending.values():
            fut.set_exception(StageUnavailable(f"stage node {self.address}: {reason}"))

    def call(self, frame: Frame, timeout: float) -> Frame:
        return self.submit(frame, timeout)()

    def submit(self, frame: Frame, timeout: float) -> Callable[[], Frame]:
        """Send ``frame`` now; the returned function waits (``timeout`` from now) for its
        answer. The node serves a stream's frames in the order they were sent."""
        fut: Future[Frame] = Future()
        with self._lock:
            if self._broken:
                raise StageUnavailable(f"stage node {self.address} is unavailable: {self._broken}")
            frame.seq = next(self._seq)
            self._pending[frame.seq] = fut
        self._out.put(frame.pack())
        deadline = time.monotonic() + timeout

        def wait() -> Frame:
            try:
                return fut.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                self._fail(f"no answer within the {timeout:.1f} s deadline")
                raise StageUnavailable(f"stage node {self.address} did not answer within "
                                       f"{timeout:.1f} s") from None

        return wait

    def close(self) -> None:
        self._out.put(_END)
        self._fail("link closed")
        self._channel.close()
