"""IoT task suite on real sensor data and text (see docs/tasks.md for metric definitions).

Public API (everything else is internal)::

    task_names() -> list[str]
    get_task(name) -> Task                      # template, parser, metric, baseline
    load_split(name, seed=0) -> Split           # fixed, seeded, disjoint train/test items
    evaluate_task(task, lm, demos="none", limit=None, seed=0, **kw) -> dict
    baseline_task(task, seed=0, limit=None) -> dict
    example_prompts(task, n=3, demos="knn", seed=0) -> list[dict]

Submodules load lazily, so ``import edgeweave.bench.tasks`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["baseline_task", "evaluate_task", "example_prompts", "get_task", "load_split",
           "task_names", "describe"]

_WHERE = {"evaluate_task": "evaluate", "baseline_task": "evaluate",
          "example_prompts": "prompts", "get_task": "base", "load_split": "base",
          "task_names": "base"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"edgeweave.bench.tasks.{_WHERE[name]}"), name)
    raise AttributeError(name)


def describe() -> list[dict[str, str]]:
    """Rows for ``edgeweave tasks list``."""
    from edgeweave.bench.tasks.base import get_task, task_names

    rows = []
    for name in task_names():
        t = get_task(name)
        rows.append({"name": name, "metric": t.metric, "description": t.description,
                     "source": t.source, "test_items": str(t.test_size)})
    return rows
