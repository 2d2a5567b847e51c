"""Probe this host once: microbenchmarks -> a ``host`` DeviceProfile and the calibration.

The result is cached in ``$EDGEWEAVE_HOME/profile/host.json`` (atomic write); ``probe()``
returns the cache unless ``refresh=True`` or the cache is from another machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeweave.paths import atomic_write_json, home
from edgeweave.profile.cost import OPS_PER_BLOCK, Calibration
from edgeweave.types import DeviceProfile

VERSION = 1


@dataclass(frozen=True)
class HostProfile:
    machine: str
    cpus: int
    memory_available: int
    mem_bw: float  # STREAM-like copy, bytes/s
    gemv_bw: float  # fp32 decode kernel, weight bytes/s
    matmul: dict[str, float]  # ops/s per precision
    op_overhead_s: float
    model_timing: dict[str, Any] = field(default_factory=dict)  # microbench.ModelTiming as dict
    probed_at: float = 0.0
    probe_s: float = 0.0
    threads: int = 0  # intra-op threads during the measurement (0: not recorded)
    version: int = VERSION

    def device(self) -> DeviceProfile:
        """This host as a device class (power figures unknown: a typical small x86 box)."""
        return DeviceProfile(
            name="host", tier="gateway", memory=self.memory_available, mem_bw=self.mem_bw,
            compute=dict(self.matmul), power_idle_w=5.0, power_active_w=15.0,
            op_overhead_s=self.op_overhead_s,
            description=f"this host ({self.machine}, {self.cpus} CPUs), measured",
        )

    def calibration(self) -> Calibration:
        return Calibration(bw_efficiency=min(1.0, self.gemv_bw / self.mem_bw),
                           source="host probe " + time.strftime("%Y-%m-%d %H:%M UTC",
                                                                time.gmtime(self.probed_at)))


def _machine() -> str:
    return f"{platform.node()}/{platform.machine()}/{platform.processor() or 'cpu'}"


def cache_path() -> os.PathLike[str]:
    return home() / "profile" / "host.json"


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[int]:
    """Run torch and numpy's BLAS with ``n`` threads (None: as configured) and restore.

    Microbenchmarks and the model timing must run with the same thread count; on a shared,
    oversubscribed machine one thread is also the only stable setting (two threads spin
    waiting for a core another process holds)."""
    import torch

    before = torch.get_num_threads()
    if n is None:
        yield before
        return
    torch.set_num_threads(n)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # numpy's BLAS then keeps its own thread count
            yield n
        else:
            with threadpool_limits(n):
                yield n
    finally:
        torch.set_num_threads(before)


def measure(model: str | None = None, with_model: bool = True,
            threads: int | None = None) -> HostProfile:
    """Run the microbenchmarks now (about 10 s; the model part about 5-30 s)."""
    import psutil

    from edgeweave.profile import microbench as mb

    t0 = time.perf_counter()
    with _threads(threads) as n:
        timing = asdict(mb.model_timing(model)) if with_model else {}
        return HostProfile(
            machine=_machine(), cpus=os.cpu_count() or 1,
            memory_available=int(psutil.virtual_memory().available),
            mem_bw=mb.memory_bandwidth(), gemv_bw=mb.gemv_bandwidth(),
            matmul=mb.matmul_rates(), op_overhead_s=mb.op_overhead(OPS_PER_BLOCK),
            model_timing=timing, probed_at=time.time(), probe_s=time.perf_counter() - t0,
            threads=n,
        )


def load_cached() -> HostProfile | None:
    path = cache_path()
    try:
        d = json.loads(Path(path).read_text())
        hp = HostProfile(**d)
    except (OSError, ValueError, TypeError):
        return None
    if hp.version != VERSION or hp.machine != _machine():
        return None
    return hp


def probe(refresh: bool = False, model: str | None = None, with_model: bool = True,
          threads: int | None = None) -> HostProfile:
    """The host profile, measured once and cached."""
    if not refresh:
        cached = load_cached()
        if cached is not None and (cached.model_timing or not with_model):
            return cached
    hp = measure(model, with_model, threads)
    atomic_write_json(cache_path(), asdict(hp))
    return hp
