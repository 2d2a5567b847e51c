"""Are this process's cores its own right now? The signal behind ONNX Runtime's spin mode.

ONNX Runtime's intra-op workers either spin inside a run (they pick up each op's share at
once) or sleep between ops (every op wakes them, or the calling thread does the op alone).
Measured on a 2-core VM, int4 SmolLM2, one decode step of the whole model: spinning
6.6-7.4 ms quiet but 14 ms with one core busy (``while True: pass``); sleeping 8.6-11.5 ms
quiet and 8.4-11.3 ms busy. A spin duration of 1-100 us does not help when busy. No setting
wins both ways and ONNX Runtime fixes it when a session is built, so the engines rebuild
their session (0.2 s for the whole int4 model, no extra memory: the old one goes first) when
this watch changes its mind.

The signal is the number of runnable threads in the system (``/proc/loadavg``), read just
after one of our runs returned, when our own workers have stopped and the other stages of
a pipeline wait for our answer: quiet, it is 1 (the reader); with a busy core, 2-3. Others
runnable beyond the cores our threads leave free mean a spinning worker would fight for a
core. Reads are rate-limited (one costs about 60 us here); the decision has hysteresis and
a dwell time, since every change costs a rebuild. The thresholds are far apart because the
blips are real too: three nodes of one pipeline on 2 cores, each reading after its own run,
saw others in 15-53 % of their samples (the client parsing the last token, the server
writing it), and spinning was still right there (88-95 tok/s against 68 sleeping); a busy
core shows in nearly every sample.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

SPIN, SLEEP = "run", "off"  # SessionProfile.spinning values


def read_runnable() -> int | None:
    """Runnable scheduling entities in the system now (the 4th field of ``/proc/loadavg``
    is ``running/total``); None where there is no such file."""
    try:
        with open("/proc/loadavg", "rb") as f:
            return int(f.read().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return None


class CoreWatch:
    """Decides ``SPIN`` or ``SLEEP`` from samples of other runnable threads.

    ``spare`` is how many other runnable threads fit beside ours (cores minus our threads).
    It turns to SLEEP when at least ``busy_share`` of the recent samples (``min_samples`` at
    least) saw more than ``spare`` others, and back to SPIN when at most ``quiet_share`` of a
    full window did; never twice within ``dwell_s``. Samples older than ``stale_s`` (an idle
    process) are dropped, so a decision is always about the present.
    """

    def __init__(self, spare: int, *, reader: Callable[[], int | None] = read_runnable,
                 clock: Callable[[], float] = time.monotonic, interval_s: float = 0.05,
                 window: int = 20, min_samples: int = 8, busy_share: float = 0.8,
                 quiet_share: float = 0.5, dwell_s: float = 2.0, stale_s: float = 5.0) -> None:
        self.spare = max(0, spare)
        self._reader, self._clock = reader, clock
        self.interval_s, self.min_samples = interval_s, min_samples
        self.busy_share, self.quiet_share = busy_share, quiet_share
        self.dwell_s, self.stale_s = dwell_s, stale_s
        self._samples: deque[bool] = deque(maxlen=window)
        self._last = -float("inf")
        self._changed = -float("inf")
        self._lock = threading.Lock()
        self.mode = SPIN
        self.changes = 0
        self.available = reader() is not None
        if not self.available:  # nothing to watch: never spin into a core we cannot see
            self.mode = SLEEP

    def sample(self) -> str:
        """Take a sample if the last one is old enough (call it right after a run); returns
        the mode to run in."""
        now = self._clock()
        if not self.available or now - self._last < self.interval_s:
            return self.mode
        runnable = self._reader()
        if runnable is None:
            return self.mode
        with self._lock:
            if now - self._last > self.stale_s:
                self._samples.clear()
            self._last = now
            self._samples.append(runnable - 1 > self.spare)  # minus the reading thread
            self._decide(now)
            return self.mode

    @property
    def busy_fraction(self) -> float:
        return sum(self._samples) / len(self._samples) if self._samples else 0.0

    def _decide(self, now: float) -> None:
        if now - self._changed < self.dwell_s or len(self._samples) < self.min_samples:
            return
        share = self.busy_fraction
        if self.mode == SPIN and share >= self.busy_share:
            want = SLEEP
        elif (self.mode == SLEEP and len(self._samples) == self._samples.maxlen
              and share <= self.quiet_share):
            want = SPIN
        else:
            return
        self.mode, self._changed = want, now
        self.changes += 1

    def info(self) -> dict[str, object]:
        return {"mode": self.mode, "busy_fraction": round(self.busy_fraction, 3),
                "changes": self.changes, "spare_threads": self.spare,
                "watching": self.available}


_WATCH: CoreWatch | None = None
_WATCH_LOCK = threading.Lock()


def process_watch(spare: int) -> CoreWatch:
    """The one watch of this process (every engine of a process follows the same cores),
    made on first use with ``spare`` (``runtime.policy.core_watch`` sizes it from the
    policy's cores and threads)."""
    global _WATCH
    with _WATCH_LOCK:
        if _WATCH is None:
            _WATCH = CoreWatch(spare)
        return _WATCH


def watch_info() -> dict[str, object] | None:
    """What the process's watch decided, or None before any engine asked it."""
    return None if _WATCH is None else _WATCH.info()
