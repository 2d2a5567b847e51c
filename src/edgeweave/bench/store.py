"""Benchmark results as JSON lines, one row per measured cell, resumable.

Every row has a unique ``key`` (suite cell id). A rerun after an interruption reads the
file, skips the keys already there and appends the rest; a torn last line (the process was
killed mid-write) is ignored and overwritten.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class ResultStore:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rows: dict[str, dict[str, Any]] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        good: list[str] = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # torn write from an interrupted run
            if isinstance(row, dict) and "key" in row:
                self._rows[row["key"]] = row
                good.append(line)
        # rewrite without the torn tail so appends start on a clean line
        from edgeweave.paths import atomic_write_text

        atomic_write_text(self.path, "".join(f"{g}\n" for g in good))

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._rows.get(key)

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        if "key" not in row:
            raise ValueError("a result row needs a 'key'")
        line = json.dumps(row, sort_keys=True, default=_jsonable)
        with open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._rows[row["key"]] = json.loads(line)
        return self._rows[row["key"]]

    def rows(self, kind: str | None = None) -> Iterator[dict[str, Any]]:
        for r in self._rows.values():
            if kind is None or r.get("kind") == kind:
                yield r


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)
