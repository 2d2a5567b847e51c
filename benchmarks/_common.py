"""Helpers shared by the benchmarks: a result table printer, the JSON writer, and the
protocol of measurements run in a fresh child process."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
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


def emit_result(payload: dict[str, Any]) -> None:
    """The child's side: one ``RESULT <json>`` line on stdout for :func:`run_child`."""
    print("RESULT " + json.dumps(payload), flush=True)


def run_child(args: list[str], cwd: Path | None = None
              ) -> tuple[dict[str, Any] | None, subprocess.CompletedProcess[str]]:
    """Run ``python *args`` (a benchmark in its child mode) in a fresh process, so that its
    peak memory, thread pools and allocator are its own; returns the payload it emitted
    (None if it emitted none) and the finished process for error reporting."""
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    return (json.loads(line[-1][7:]) if line else None), proc
