"""Figures for the report: inline SVG plots (matplotlib, Agg) of its typed rows.

Everything returns a string that inlines into one self-contained page: no files, no scripts.
(Plan diagrams are HTML, drawn by the report's templates: ``templates/macros.html.j2``.)
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeweave.bench.rows import TaskRow, VariantRow

PALETTE = ["#2b6cb0", "#d69e2e", "#38a169", "#c53030", "#6b46c1", "#dd6b20", "#319795", "#718096"]


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.find("<svg") :]  # drop the XML prolog so it inlines cleanly


def pareto(points: Sequence[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of points on the front (minimise x; maximise or minimise y)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = False
        for j, (x2, y2) in enumerate(points):
            if j == i:
                continue
            better_y = y2 >= y if higher_is_better else y2 <= y
            strictly = x2 < x or (y2 > y if higher_is_better else y2 < y)
            if x2 <= x and better_y and strictly:
                dominated = True
                break
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def pareto_plot(
    rows: Sequence[VariantRow], x: str, y: str, xlabel: str, ylabel: str, higher_is_better: bool,
    title: str
) -> str:
    """Field ``y`` against field ``x`` of each variant, with the Pareto front drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(getattr(r, x), getattr(r, y), r.variant) for r in rows
           if getattr(r, x) is not None and getattr(r, y) is not None]
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=100)
    if not pts:
        ax.text(0.5, 0.5, "no data", ha="center", va="center")
        return _svg(fig)
    xy = [(float(a), float(b)) for a, b, _ in pts]
    for k, (a, b, name) in enumerate(pts):
        ax.scatter([a], [b], s=60, color=PALETTE[k % len(PALETTE)], zorder=3)
        ax.annotate(name, (a, b), textcoords="offset points", xytext=(6, 4), fontsize=9)
    front = pareto(xy, higher_is_better)
    ax.plot(
        [xy[i][0] for i in front],
        [xy[i][1] for i in front],
        "--",
        color="#4a5568",
        lw=1,
        zorder=2,
        label="Pareto front",
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _svg(fig)


def task_bar_plot(task_rows: Sequence[TaskRow], baselines: Mapping[str, float]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def demos(r: TaskRow) -> str:
        return "none" if r.demos is None else r.demos

    tasks = sorted({r.task for r in task_rows})
    series = sorted({(r.variant, demos(r)) for r in task_rows})
    fig, ax = plt.subplots(figsize=(7.5, 3.4), dpi=100)
    if not tasks:
        ax.text(0.5, 0.5, "no data", ha="center", va="center")
        return _svg(fig)
    width = 0.8 / (len(series) + (1 if baselines else 0))
    val = {(r.task, r.variant, demos(r)): r.value for r in task_rows}
    for k, (variant, demos) in enumerate(series):
        xs = [i + k * width for i in range(len(tasks))]
        ys = [val.get((t, variant, demos)) or 0.0 for t in tasks]
        ax.bar(xs, ys, width, label=f"{variant} · {demos} demos", color=PALETTE[k % len(PALETTE)])
    if baselines:
        k = len(series)
        ax.bar(
            [i + k * width for i in range(len(tasks))],
            [baselines.get(t, 0.0) for t in tasks],
            width,
            label="non-LLM baseline",
            color="#a0aec0",
            hatch="//",
        )
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))])
    ax.set_xticklabels(tasks, fontsize=8, rotation=15)
    ax.set_ylabel("task score (higher is better)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    return _svg(fig)
