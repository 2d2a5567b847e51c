"""The runtime policy of a process that runs stages: its threads and how idle threads wait.

Every process that runs a stage (``edgeweave node``, ``serve``, ``generate``, ``demo``,
``bench``, ``eval``) applies its own :class:`ProcessPolicy` first thing, before numpy, torch
or ONNX Runtime load, from the cores it may use and ``--colocated``. Nothing is left to a
launcher: a node started by hand behaves exactly as the benchmarks measure it.

Why each setting (2-core host, SmolLM2-135M):

* OpenMP (torch) and OpenBLAS (numpy) workers busy-wait after each parallel region by
  default; OpenBLAS for 2^28 cycles (~0.1 s) after every GEMV (measured: 4.3 s of CPU for
  0.4 s of GEMV work). On a device that runs other work, or beside other stages, those
  spinning threads steal the cores the next step needs: ``OMP_WAIT_POLICY=PASSIVE`` and
  ``OPENBLAS_THREAD_TIMEOUT=21`` (2^21 cycles, ~1 ms: long enough to bridge the gaps between
  one hop's GEMVs, measured at 2^20..2^22).
* ONNX Runtime's intra-op pool gets the cores of the process's affinity mask, and its
  workers spin inside a run only while those cores are free (``ort_spinning = "auto"``,
  ``runtime.contention``). Measured on 2 cores, int4 SmolLM2, one whole-model decode step:
  spinning 6.6-7.4 ms quiet but 14 ms with one core busy (``while True: pass``), sleeping
  between ops 8.6-11.5 ms quiet and 8.4-11.3 ms busy; a worker that spins holds a core
  another process needs, and when that process holds the core, the spin only delays the
  step. So the engines spin on free cores and rebuild their session to sleep when other
  threads want the cores (and back when they are gone). An earlier host measured the two
  modes equal when quiet, which is why this was "off" before.

* glibc's malloc raises its mmap threshold every time a large block is freed, so the KV
  caches of finished requests end up in the heap, fragmented, and the server's RSS grows by
  about a cache per request (measured: 200 -> 290 MB over three 400-token requests).
  ``mallopt`` pins the threshold at 256 KiB and trims above 1 MiB (with the arena shrink after
  each prefill in the ONNX engine, 200 -> 204 MB).

A variable the user set in the environment always wins over the policy.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

from edgeweave.errors import ConfigError
from edgeweave.runtime.contention import CoreWatch, process_watch, watch_info

log = logging.getLogger(__name__)


def core_watch() -> CoreWatch:
    """The process's core watch, sized by the current policy: how many other runnable
    threads fit beside this process's compute threads."""
    policy = current()
    return process_watch(policy.cores - policy.intra_threads)


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and taskset set)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ProcessPolicy:
    """Threads and waiting of this process (see the module docstring)."""

    cores: int
    colocated: bool = False
    threads: int = 0  # an explicit --threads; 0 = every usable core

    def __post_init__(self) -> None:
        if self.cores < 1:
            raise ConfigError(f"a process needs at least one core (got {self.cores})")
        if self.threads < 0:
            raise ConfigError(f"--threads must be >= 0 (got {self.threads})")

    @classmethod
    def for_this_process(cls, colocated: bool = False, threads: int = 0) -> ProcessPolicy:
        return cls(usable_cores(), colocated, threads)

    @property
    def intra_threads(self) -> int:
        """Threads of one stage's compute (ONNX Runtime intra-op, torch)."""
        return min(self.threads or self.cores, self.cores) if self.threads else self.cores

    @property
    def ort_spinning(self) -> str:
        """ONNX Runtime's spin policy: ``auto``, spinning inside runs while the cores are
        free (see the module docstring)."""
        return "auto"

    def env(self) -> dict[str, str]:
        return {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "21",
                "OMP_NUM_THREADS": str(self.intra_threads)}

    def info(self) -> dict[str, object]:
        """What a node reports about itself (``INFO``): the policy and the environment its
        thread pools actually read."""
        return {"cores": self.cores, "colocated": self.colocated,
                "threads": self.intra_threads, "ort_spinning": self.ort_spinning,
                "applied": _CURRENT is self,
                "env": {k: os.environ.get(k) for k in self.env()},
                "ort_spin_now": watch_info()}

    def apply(self) -> ProcessPolicy:
        """Set the environment for thread pools not loaded yet and make this the policy that
        engines built in this process use. Returns ``self``."""
        global _CURRENT
        late = [m for m in ("numpy", "torch", "onnxruntime") if m in sys.modules]
        if late:  # their pools read the environment when they load: too late for them
            log.debug("runtime policy applied after %s loaded", ", ".join(late))
        for key, value in self.env().items():
            os.environ.setdefault(key, value)
        _pin_malloc()
        _CURRENT = self
        return self


_CURRENT: ProcessPolicy | None = None

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def _libc():  # noqa: ANN202 - a ctypes.CDLL, or None where there is no glibc
    if sys.platform != "linux":
        return None
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def trim_heap() -> None:
    """Give freed heap memory back to the system (glibc ``malloc_trim``; a no-op elsewhere).

    Loading an ONNX graph frees the raw copy of every weight once it is prepacked, and a
    finished request frees its KV cache; without a trim, glibc may keep that memory."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _pin_malloc() -> bool:
    """Fixed mmap and trim thresholds (see the module docstring); False where there is no
    glibc (musl, macOS) or the user tuned malloc through its own variables."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt") or any(k.startswith("MALLOC_")
                                                           for k in os.environ):
        return False
    ok = libc.mallopt(M_MMAP_THRESHOLD, 256 << 10) == 1
    return ok and libc.mallopt(M_TRIM_THRESHOLD, 1 << 20) == 1


def current() -> ProcessPolicy:
    """The applied policy, or the default one for this process."""
    return _CURRENT or ProcessPolicy.for_this_process()
