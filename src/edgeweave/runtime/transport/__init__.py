"""How frames reach a stage host: in-process (embedded default) or gRPC (nodes, mTLS)."""

from edgeweave.runtime.transport.base import Link, StageUnavailable
from edgeweave.runtime.transport.frame import ErrorCode, Frame, Op

__all__ = ["ErrorCode", "Frame", "Link", "Op", "StageUnavailable"]
