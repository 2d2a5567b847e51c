"""Energy per token: RAPL counters when the kernel exposes them, else the cost model.

Every figure says where it came from (``"rapl"`` measured or ``"model"`` predicted), so the
report never mixes the two silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RAPL = Path("/sys/class/powercap")


@dataclass(frozen=True)
class EnergyReading:
    joules: float
    source: str  # "rapl" or "model"


def rapl_files() -> list[Path]:
    """Package-level energy counters that this process can read."""
    out = []
    for d in sorted(RAPL.glob("intel-rapl:*")):
        f = d / "energy_uj"
        if ":" in d.name and d.name.count(":") == 1 and f.is_file():
            try:
                int(f.read_text())
            except (OSError, ValueError):
                continue
            out.append(f)
    return out


class EnergyMeter:
    """``with EnergyMeter() as m: ...``; then ``m.joules`` (None when RAPL is unreadable)."""

    def __init__(self) -> None:
        self.files = rapl_files()
        self.joules: float | None = None
        self._start: list[int] = []

    @property
    def available(self) -> bool:
        return bool(self.files)

    def __enter__(self) -> EnergyMeter:
        self._start = [int(f.read_text()) for f in self.files]
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.files:
            return
        total = 0
        for f, s in zip(self.files, self._start, strict=True):
            e = int(f.read_text())
            if e < s:  # the counter wrapped
                rng = f.parent / "max_energy_range_uj"
                e += int(rng.read_text()) if rng.is_file() else 0
            total += e - s
        self.joules = total / 1e6


def per_token(measured_j: float | None, tokens: int, predicted_j_per_token: float | None
              ) -> EnergyReading | None:
    if measured_j is not None and tokens > 0:
        return EnergyReading(measured_j / tokens, "rapl")
    if predicted_j_per_token is not None:
        return EnergyReading(predicted_j_per_token, "model")
    return None
