"""gRPC link: one bidirectional stream per node carrying packed frames (optionally mTLS).

All sessions of a coordinator share the stream; responses are matched to requests by
``seq``, so many threads may wait on one node at once. A broken stream or a response past
its deadline raises :class:`StageUnavailable`, and the link stays broken (the coordinator
fails over instead of retrying a dead node).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from edgeweave.runtime.transport.answers import Answers
from edgeweave.runtime.transport.base import StageUnavailable
from edgeweave.runtime.transport.frame import Frame
from edgeweave.runtime.transport.grpc_server import GRPC_OPTIONS, METHOD

_END = object()


class GrpcLink:
    parallel = True  # each node computes in its own process; answers match by seq
    # the reply codecs the node announced (``dial`` sets them); None: a node of this build
    reply_codecs: tuple[str, ...] | None = None

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
        self._answers = Answers(address)
        self._out: queue.SimpleQueue[Any] = queue.SimpleQueue()
        call = self._channel.stream_stream(METHOD)  # no serializers: frames are bytes
        self._responses = call(iter(self._out.get, _END))
        self._reader = threading.Thread(target=self._read, name=f"grpc-link-{address}",
                                        daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for raw in self._responses:
                self._answers.resolve(Frame.unpack(raw))
            reason = "the node closed the stream"
        except Exception as e:  # grpc.RpcError when the node dies or the channel closes
            details = e.details() if hasattr(e, "details") else str(e)
            reason = f"{type(e).__name__}: {details}"
        self._answers.fail(reason)

    def call(self, frame: Frame, timeout: float) -> Frame:
        return self.submit(frame, timeout)()

    def submit(self, frame: Frame, timeout: float) -> Callable[[], Frame]:
        """Send ``frame`` now; the returned function waits (``timeout`` from now) for its
        answer. The node serves a stream's frames in the order they were sent."""
        fut = self._answers.register(frame)
        self._out.put(frame.pack())
        return self._answers.waiter(fut, timeout)

    def close(self) -> None:
        self._out.put(_END)
        self._answers.fail("link closed")
        self._channel.close()
