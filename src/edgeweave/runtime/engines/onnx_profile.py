"""ONNX Runtime session options for one device: threads, provider family, arena, spinning,
and the process-wide thread pool that stages of one process may share."""

from __future__ import annotations

import os
from dataclasses import dataclass

from edgeweave.errors import ConfigError
from edgeweave.profile import catalog
from edgeweave.profile.catalog import ONNX_PROVIDERS
from edgeweave.types import DeviceProfile


def device_kind(device_name: str) -> str:
    """Provider family of a device class of the catalog (CPU for a class it does not know,
    such as the probed host)."""
    known = catalog.devices().get(device_name)
    return known.providers if known is not None else "cpu"


@dataclass(frozen=True)
class SessionProfile:
    """ONNX Runtime session options for one device (defaults tuned for small CPUs)."""

    threads: int = 0  # intra-op threads; 0 = the cores this process may use
    device: str = "cpu"  # a provider family: a key of ONNX_PROVIDERS
    arena: bool = True  # keep the CPU arena: decode reallocates the same shapes every step
    optimization: str = "all"  # basic | extended | all
    # worker threads busy-wait between ops: "run" spins only inside a run and stops at its
    # end (stages sharing a small CPU, or the next token's Python work, get the cores back),
    # "always" keeps spinning between runs, "off" sleeps between ops; "auto" is "run" while
    # the process has its cores to itself and "off" while others want them
    # (``runtime.contention``: the engine rebuilds its session when that changes)
    spinning: str = "run"
    # one process-wide ORT thread pool for every stage of this process (stages run one after
    # the other, so per-session pools would only fight over the same cores); it can be set
    # up only before the first session, otherwise sessions keep their own pools
    shared_pool: bool = False

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0 (got {self.threads})")
        if self.device not in ONNX_PROVIDERS:
            raise ConfigError(f"unknown device kind {self.device!r}: choose one of "
                              f"{', '.join(sorted(ONNX_PROVIDERS))}")
        if self.spinning not in ("run", "always", "off", "auto"):
            raise ConfigError(f"spinning must be run, always, off or auto "
                              f"(got {self.spinning!r})")
        if self.optimization not in ("basic", "extended", "all"):
            raise ConfigError(f"optimization must be basic, extended or all "
                              f"(got {self.optimization!r})")

    @classmethod
    def for_process(cls, threads: int = 0) -> SessionProfile:
        """Options from this process's runtime policy (``runtime.policy``)."""
        from edgeweave.runtime.policy import current

        policy = current()
        return cls(threads=threads or policy.intra_threads, spinning=policy.ort_spinning)

    @classmethod
    def for_device(cls, device, threads: int = 0) -> SessionProfile:
        """Options for a :class:`~edgeweave.types.DeviceProfile` (or its class name)."""
        family = device.providers if isinstance(device, DeviceProfile) else device_kind(device)
        return cls(threads=threads, device=family)

    def providers(self) -> list[str]:
        import onnxruntime as ort

        have = set(ort.get_available_providers())
        return [p for p in ONNX_PROVIDERS[self.device] if p in have] or ["CPUExecutionProvider"]

    def spin_mode(self) -> str:
        """The spin mode a session built now gets: ``spinning``, with ``auto`` resolved by
        the process's :func:`~edgeweave.runtime.policy.core_watch`."""
        if self.spinning != "auto":
            return self.spinning
        from edgeweave.runtime.policy import core_watch

        return core_watch().mode

    def options(self, spin: str | None = None):
        """Session options; ``spin`` overrides the resolved spin mode (run | always | off)."""
        import onnxruntime as ort

        spin = spin or self.spin_mode()
        so = ort.SessionOptions()
        threads = self.threads or len(os.sched_getaffinity(0))
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        if self.shared_pool and _global_pool(threads):
            so.use_per_session_threads = False
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.enable_cpu_mem_arena = self.arena
        so.graph_optimization_level = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[self.optimization]
        so.add_session_config_entry("session.intra_op.allow_spinning",
                                    "0" if spin == "off" else "1")
        so.add_session_config_entry("session.force_spinning_stop",
                                    "1" if spin == "run" else "0")
        so.log_severity_level = 3
        return so


_POOL: dict[str, int] = {}


def _global_pool(threads: int) -> bool:
    """Create the process-wide pool once; True when it exists with ``threads`` threads."""
    if "threads" not in _POOL:
        from onnxruntime.capi import _pybind_state

        try:
            _pybind_state.set_global_thread_pool_sizes(threads, 1)
            _POOL["threads"] = threads
        except Exception:  # noqa: BLE001 - the ORT environment already exists
            _POOL["threads"] = -1
    return _POOL["threads"] == threads
