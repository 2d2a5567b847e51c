"""In-process link: frames go straight to a :class:`StageHost` (embedded default).

Frames are still built and their payloads still encoded with the plan's codec, so the
embedded deployment computes exactly what a networked one does and reports the bytes it
would have sent.
"""

from __future__ import annotations

from collections.abc import Callable

from edgeweave.runtime.stage import StageHost
from edgeweave.runtime.transport.base import StageUnavailable
from edgeweave.runtime.transport.frame import Frame


class InProcessLink:
    # the stages share this process's cores (intra-op threads) and, embedded, one model:
    # running them at once wins nothing (runtime.pipeline)
    parallel = False

    def __init__(self, host: StageHost, address: str = "inproc") -> None:
        self.host = host
        self.address = address
        self.closed = False

    def call(self, frame: Frame, timeout: float) -> Frame:
        if self.closed:
            raise StageUnavailable(f"in-process stage host {self.address} is closed")
        return self.host.handle(frame)

    def submit(self, frame: Frame, timeout: float) -> Callable[[], Frame]:
        """Answered at once: the host runs in this thread."""
        resp = self.call(frame, timeout)
        return lambda: resp

    def close(self) -> None:
        self.closed = True
