"""Anomaly detection and explanation in physiological series (aeon).

Two real series with annotated anomalies: an ECG with three anomalous beats of 100 samples
(``load_ecg_diff_count_3``) and the KDD-TSAD 2021 series 135, a heart rate with one annotated
discord (``load_kdd_tsad_135``). Each series is z-normalised, then cut into 100-sample windows:
*anomaly* windows (stride 20) hold at least min(30, event length) anomalous samples, *normal*
windows (stride 100) hold none. The split is by event (seeded half of the four events to test)
and, for normal windows, by 1000-sample block, so overlapping windows never cross splits.
The explanation asked for is where the anomaly sits: start, middle or end third of the window.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import numpy as np

from edgeweave.bench.tasks.base import Item, Split, Task, register_task, stratified_sample
from edgeweave.prompt.sensors import EncodingSpec, encode_window, window_features
from edgeweave.prompt.templates import PromptTemplate

WINDOW = 100
THIRDS = ("start", "middle", "end")


def _series() -> list[tuple[str, np.ndarray, np.ndarray]]:
    from aeon.datasets import load_ecg_diff_count_3, load_kdd_tsad_135

    out = []
    for name, fn in (("ecg", load_ecg_diff_count_3), ("kdd135", load_kdd_tsad_135)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated loader, data shipped
            x, y = fn()
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64)
        normal = x[y == 0]
        out.append((name, (x - normal.mean()) / (normal.std() or 1.0), y))
    return out


def _events(y: np.ndarray) -> list[tuple[int, int]]:
    idx = np.flatnonzero(y)
    if idx.size == 0:
        return []
    runs = np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1)
    return [(int(r[0]), int(r[-1]) + 1) for r in runs]  # half-open


@register_task
class AnomalyTask(Task):
    name = "anomaly"
    description = "Is a 100-sample ECG / heart-rate window anomalous, and where (start/middle/end)"
    source = "aeon load_ecg_diff_count_3 + load_kdd_tsad_135 (KDD-TSAD 2021 #135)"
    metric = "f1"
    channels = ("signal",)
    encoding = EncodingSpec("values", points=16)
    template = PromptTemplate(
        instruction="Decide if a window of a heart signal (16 averages on a 0-99 scale, range "
                    "in z-units) is normal or holds an anomaly, and where.",
        input_label="Signal", output_label="Verdict",
        choices=("normal", "anomaly at start", "anomaly at middle", "anomaly at end"))
    max_answer_tokens = 6
    test_size = 24

    def build(self, seed: int) -> Split:
        rng = np.random.default_rng(seed)
        series = _series()
        events = [(name, ev) for name, _, y in series for ev in _events(y)]
        test_events = {events[i] for i in rng.permutation(len(events))[: len(events) // 2]}
        train, test = [], []
        for name, x, y in series:
            for ev in _events(y):
                need = min(30, ev[1] - ev[0])
                for s in range(max(0, ev[0] - WINDOW), min(len(x) - WINDOW, ev[1]) + 1, 20):
                    inside = int(y[s:s + WINDOW].sum())
                    if inside < need:
                        continue
                    mid = (np.flatnonzero(y[s:s + WINDOW]).mean()) / WINDOW
                    where = THIRDS[min(int(mid * 3), 2)]
                    it = self._item(f"{name}-a{s}", x[s:s + WINDOW], f"anomaly at {where}")
                    (test if (name, ev) in test_events else train).append(it)
            blocks = np.arange(len(x) // 1000 + 1)
            test_blocks = set(rng.permutation(blocks)[: len(blocks) // 2].tolist())
            for s in range(0, len(x) - WINDOW + 1, WINDOW):
                if y[s:s + WINDOW].any():
                    continue
                it = self._item(f"{name}-n{s}", x[s:s + WINDOW], "normal")
                (test if s // 1000 in test_blocks else train).append(it)
        return Split(tuple(train), tuple(stratified_sample(test, self.test_size, seed)))

    def _item(self, iid: str, x: np.ndarray, answer: str) -> Item:
        w = x[None, :]
        label = "normal" if answer == "normal" else "anomaly"
        extra = [np.abs(x).max(), np.abs(np.diff(x)).max(), float(np.argmax(np.abs(x))) / WINDOW]
        feats = np.concatenate([window_features(w, shape_points=20), extra]).astype(np.float32)
        return Item(iid, encode_window(w, self.channels, self.encoding), answer, label, w, feats,
                    {"where": answer.split()[-1] if label == "anomaly" else None})

    def parse(self, text: str) -> str | None:
        low = text.lower()
        m_an = re.search(r"anomal|abnormal|unusual|spike", low)
        m_no = re.search(r"(?<!ab)normal", low)
        if m_an and (not m_no or m_an.start() < m_no.start()):
            where = next((w for w in THIRDS if w in low[m_an.start():]), None)
            return f"anomaly at {where}" if where else "anomaly"
        return "normal" if m_no else None

    def score(self, items: Sequence[Item], preds: Sequence[str | None]) -> dict[str, float]:
        gold = [i.label == "anomaly" for i in items]
        flag = [p is not None and p.startswith("anomaly") for p in preds]
        tp = sum(g and f for g, f in zip(gold, flag, strict=True))
        fp = sum(f and not g for g, f in zip(gold, flag, strict=True))
        fn = sum(g and not f for g, f in zip(gold, flag, strict=True))
        tn = len(items) - tp - fp - fn
        located = sum(g and p is not None and p == i.answer
                      for g, p, i in zip(gold, preds, items, strict=True))
        tpr = tp / (tp + fn) if tp + fn else 0.0
        tnr = tn / (tn + fp) if tn + fp else 0.0
        n = max(len(items), 1)
        return {"f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
                "accuracy": (tp + tn) / n, "balanced_accuracy": (tpr + tnr) / 2,
                "precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tpr,
                "localisation": located / tp if tp else 0.0,
                "invalid_rate": sum(p is None for p in preds) / n}
