"""Next-value forecasting of electricity demand: ItalyPowerDemand (aeon).

Each series is one day of hourly Italian power demand (24 values, z-normalised per day). An
item shows the 12 hours before a seeded target hour h in [12, 24) on a 0-99 scale of those 12
values and asks for hour h on the same scale (values outside 0-99 are allowed). Train items
come from the UCR train days, test items from the UCR test days.

Metric: ``accuracy`` = share of answers within 10 scale points (10 % of the context range) of
the truth; also the mean absolute error (unparseable answers count as the naive forecast
error plus 50), and the naive last-value forecast's scores for reference.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from edgeweave.bench.tasks.base import Item, Split, Task, register_task
from edgeweave.prompt.sensors import scale_0_99
from edgeweave.prompt.templates import PromptTemplate

if TYPE_CHECKING:
    from edgeweave.runtime.constraints import OutputFormat

CONTEXT = 12
TOLERANCE = 10


@register_task
class ForecastTask(Task):
    name = "forecast"
    description = "Next hourly electricity demand value from the previous 12 hours"
    source = "ItalyPowerDemand (UCR), aeon.datasets.load_italy_power_demand"
    channels = ("demand",)
    template = PromptTemplate(
        instruction="Forecast the next hourly electricity demand value. The previous 12 hours "
                    "are on a 0-99 scale; answer with one integer on the same scale.",
        input_label="Demand", output_label="Next")
    max_answer_tokens = 4
    test_size = 30

    def build(self, seed: int) -> Split:
        from aeon.datasets import load_italy_power_demand

        rng = np.random.default_rng(seed)
        parts = {}
        for split in ("train", "test"):
            X, _ = load_italy_power_demand(split=split)
            days = np.asarray(X[:, 0], dtype=np.float64)
            if split == "test":
                days_idx = rng.choice(len(days), self.test_size, replace=False)
            else:
                days_idx = np.arange(len(days))
            parts[split] = [self._item(f"{split}-{d}", days[d], int(rng.integers(CONTEXT, 24)))
                            for d in days_idx]
        return Split(tuple(parts["train"]), tuple(parts["test"]))

    def _item(self, iid: str, day: np.ndarray, hour: int) -> Item:
        ctx = day[hour - CONTEXT:hour]
        lo, hi = float(ctx.min()), float(ctx.max())
        vals = scale_0_99(ctx, lo, hi)
        target = int(scale_0_99(day[hour:hour + 1], lo, hi)[0])
        query = f"hours {hour - CONTEXT}-{hour - 1}: " + " ".join(str(v) for v in vals)
        # features: the scaled context shape, its last steps, and the hour of day
        feats = np.concatenate([vals / 99.0, [(vals[-1] - vals[-2]) / 99.0,
                                np.cos(2 * np.pi * hour / 24), np.sin(2 * np.pi * hour / 24)]])
        return Item(iid, query, str(target), None, ctx[None, :], feats.astype(np.float32),
                    {"hour": hour, "last": int(vals[-1])})

    def answer_format(self) -> OutputFormat:
        from edgeweave.runtime.constraints import OutputFormat

        return OutputFormat("regex", pattern=r" -?[0-9]{1,3}")

    def parse(self, text: str) -> str | None:
        m = re.search(r"-?\d+", text)
        return m.group(0) if m else None

    def score(self, items: Sequence[Item], preds: Sequence[str | None]) -> dict[str, float]:
        n = max(len(items), 1)
        errs, naive = [], []
        for it, p in zip(items, preds, strict=True):
            truth = int(it.answer)
            naive_err = abs(it.meta["last"] - truth)
            naive.append(naive_err)
            errs.append(abs(int(p) - truth) if p is not None else naive_err + 50)
        e, b = np.asarray(errs, dtype=np.float64), np.asarray(naive, dtype=np.float64)
        return {"accuracy": float((e <= TOLERANCE).sum() / n),
                "mae": float(e.mean()) if errs else 0.0,
                "naive_accuracy": float((b <= TOLERANCE).sum() / n),
                "naive_mae": float(b.mean()) if naive else 0.0,
                "invalid_rate": sum(p is None for p in preds) / n}

    def baseline(self, split: Split) -> dict[str, float]:
        """k-nearest-neighbour regression (k=5) of the next step on the same features."""
        tr, te = self.embed(split.train, split.train), self.embed(split.train, split.test)
        steps = np.asarray([int(i.answer) - i.meta["last"] for i in split.train], dtype=np.float64)
        preds = []
        for row, it in zip(te @ tr.T, split.test, strict=True):
            nn = np.argsort(-row)[:5]
            preds.append(str(int(round(it.meta["last"] + steps[nn].mean()))))
        return self.score(split.test, preds)
