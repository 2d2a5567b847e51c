"""The link interface the coordinator uses to talk to one node."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from edgeweave.errors import RuntimeStageError
from edgeweave.runtime.transport.frame import Frame


class StageUnavailable(RuntimeStageError):
    """A node did not answer within its deadline or its connection broke (failover cue)."""

    def __init__(self, message: str, device: str = "") -> None:
        super().__init__(message)
        self.device = device


class NodeError(RuntimeStageError):
    """A node answered with an ERROR frame; ``code`` is its ``ErrorCode``."""

    code: int = 1


class Link(Protocol):
    """A request/response channel to one node; safe to call from several threads."""

    address: str
    # calls to two links of this kind run at the same time (separate node processes), so a
    # pipelined prefill overlaps its stages over them (``runtime.pipeline``)
    parallel: bool

    def call(self, frame: Frame, timeout: float) -> Frame:
        """Send ``frame``; return the node's response or raise :class:`StageUnavailable`."""
        ...

    def submit(self, frame: Frame, timeout: float) -> Callable[[], Frame]:
        """Send ``frame`` now; the returned function waits for its answer as :meth:`call`
        does. A node serves one link's frames in the order they were sent."""
        ...

    def close(self) -> None:
        ...
