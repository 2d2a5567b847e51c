"""Requests in flight on one link to a node, matched to their answers by ``seq``.

Both links to a node (``grpc_link`` and ``frame_socket``) carry many threads' frames on one
stream: each request gets the next ``seq``, its waiter a future that the link's reader fills
when the answer with that ``seq`` arrives. A broken stream or a missed deadline breaks the
link for good: every waiter gets :class:`StageUnavailable`, the coordinator fails over
instead of retrying a dead node.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from edgeweave.runtime.transport.base import StageUnavailable
from edgeweave.runtime.transport.frame import Frame


class Answers:
    def __init__(self, address: str) -> None:
        self.address = address
        self._seq = itertools.count(1)
        self._pending: dict[int, Future[Frame]] = {}
        self._lock = threading.Lock()
        self.broken: str | None = None

    def register(self, frame: Frame) -> Future[Frame]:
        """Number ``frame`` and return the future its answer fills; raises if broken."""
        fut: Future[Frame] = Future()
        with self._lock:
            if self.broken:
                raise StageUnavailable(f"stage node {self.address} is unavailable: {self.broken}")
            frame.seq = next(self._seq)
            self._pending[frame.seq] = fut
        return fut

    def resolve(self, resp: Frame) -> None:
        with self._lock:
            fut = self._pending.pop(resp.seq, None)
        if fut is not None:
            fut.set_result(resp)

    def fail(self, reason: str) -> None:
        with self._lock:
            self.broken = self.broken or reason
            pending, self._pending = self._pending, {}
        for fut in pending.values():
            fut.set_exception(StageUnavailable(f"stage node {self.address}: {reason}"))

    def waiter(self, fut: Future[Frame], timeout: float,
               on_timeout: Callable[[], None] = lambda: None) -> Callable[[], Frame]:
        """The function that waits for ``fut`` until ``timeout`` s from now; past it the
        link breaks (``on_timeout`` then closes the stream) and the wait raises."""
        deadline = time.monotonic() + timeout

        def wait() -> Frame:
            try:
                return fut.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                self.fail(f"no answer within the {timeout:.1f} s deadline")
                on_timeout()
                raise StageUnavailable(f"stage node {self.address} did not answer within "
                                       f"{timeout:.1f} s") from None

        return wait
