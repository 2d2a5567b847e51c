"""Thread pools of a process that runs stages: numpy's BLAS and the colocated-node policy.

No torch here: a node that runs ONNX stages imports this and never loads torch.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def _blas() -> Any:
    """threadpoolctl's controller of numpy's BLAS (None when it cannot be found)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    libs = ThreadpoolController().select(user_api="blas")
    return libs if libs.lib_controllers else None


def blas_threads() -> int:
    """Threads numpy's BLAS (the GEMV route) runs with now; 0 when unknown."""
    libs = _blas()
    return min(c.num_threads for c in libs.lib_controllers) if libs is not None else 0


def set_blas_threads(n: int) -> None:
    """Set numpy's BLAS thread count (process-wide); a no-op when the library is unknown."""
    libs = _blas()
    if libs is not None:
        for c in libs.lib_controllers:
            c.set_num_threads(n)


class ColocatedThreads:
    """BLAS threads for a node that shares its host's cores with other nodes.

    A pipeline runs one stage at a time per stream, so with a single stream every node may
    use all cores. With several streams the nodes compute at once and all-cores-each
    oversubscribes the host (measured on 2 cores, 3 nodes, 2 threads each: 16 streams 6.3
    tok/s aggregate against 10.4 with one thread each). So: ``wide`` threads while the last
    ``window`` forward requests came from one session, one thread as soon as they do not.
    Counting requests instead of seconds keeps it right at any token rate.
    """

    def __init__(self, wide: int, window: int = 4) -> None:
        self.wide, self.window = max(1, wide), window
        self._recent: list[str] = []
        self._now = blas_threads()

    @property
    def current(self) -> int:
        return self._now

    def observe(self, session: str) -> int:
        """Record a forward of ``session``; returns (and sets) the thread count for it."""
        self._recent.append(session)
        del self._recent[:-self.window]
        want = self.wide if len(set(self._recent)) == 1 else 1
        if want != self._now:
            set_blas_threads(want)
            self._now = want
        return want
