"""How frames reach a stage host: in-process (embedded default) or gRPC (nodes, mTLS)."""

from edgeweave.runtime.transport.base import Link, StageUnavailable
from edgeweave.runtime.transport.frame import ErrorCode, Frame, FrameError, Op

__all__ = ["ErrorCode", "Frame", "FrameError", "Link", "Op", "StageUnavailable"]
