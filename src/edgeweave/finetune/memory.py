"""Measure what a training option costs in memory, as numbers a report can carry.

Two views: ``peak_rss_mb`` (process resident set sampled every few ms, minus the level at
entry: what a device would see) and ``saved_mb`` (bytes autograd keeps for backward at the
end of the largest forward pass: the activation memory the options trade against compute).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import psutil
import torch


@dataclass
class MemoryReport:
    peak_rss_mb: float = 0.0
    saved_mb: float = 0.0


class MemoryMeter:
    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.report = MemoryReport()
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._base = 0
        self._peak = 0
        self._saved_now = 0
        self._saved_ptrs: set[int] = set()

    def __enter__(self) -> MemoryMeter:
        self._base = self._peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._proc.memory_info().rss)
            time.sleep(self.interval_s)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._peak = max(self._peak, self._proc.memory_info().rss)
        self.report.peak_rss_mb = (self._peak - self._base) / 2**20

    # -- activation accounting around one forward pass -----------------------------------
    def saved_tensors(self, model: torch.nn.Module) -> torch.autograd.graph.saved_tensors_hooks:
        # Weights are counted by the model, not as activations: pre-mark their storages.
        self._saved_now = 0
        self._saved_ptrs = {t.untyped_storage().data_ptr()
                            for t in [*model.parameters(), *model.buffers()]}

        def pack(t: torch.Tensor) -> torch.Tensor:
            try:
                ptr = t.untyped_storage().data_ptr()
            except (RuntimeError, NotImplementedError):  # e.g. wrapper subclasses
                return t
            if ptr not in self._saved_ptrs:
                self._saved_ptrs.add(ptr)
                self._saved_now += t.untyped_storage().nbytes()
            return t

        return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)

    def end_forward(self) -> None:
        self.report.saved_mb = max(self.report.saved_mb, self._saved_now / 2**20)
