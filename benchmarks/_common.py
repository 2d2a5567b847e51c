"""Helpers shared by the benchmarks: a result table printer and the JSON writer."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

from edgeweave.paths import atomic_write_json

RESULTS = Path(__file__).resolve().parent.parent / "results"


def host_info() -> dict[str, Any]:
    import torch

    return {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    cells = [[str(c) for c in columns]] + [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    print(f"\n{title}")
    for j, r in enumerate(cells):
        print("  ".join(c.rjust(w) if j else c.ljust(w) for c, w in zip(r, widths, strict=True)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def write_json(name: str, payload: dict[str, Any]) -> Path:
    path = RESULTS / f"{name}.json"
    atomic_write_json(path, {"host": host_info(), **payload})
    print(f"\nwrote {path}")
    return path
