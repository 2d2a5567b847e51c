"""Appliance identification from a power signature: ACSF1 (aeon).

Ten appliance categories (mobile phone chargers, coffee machines, computer stations, fridges
and freezers, Hi-Fi systems, CFL lamps, laptop chargers, microwave ovens, printers,
televisions), one hour of power per item (1460 samples). The shipped series are z-normalised
and the numeric class ids are not mapped to names in the distribution, so classes are presented
as opaque ids (``type0`` .. ``type9``): the task measures pattern matching against
demonstrations, not world knowledge. The UCR train/test split (100/100) is kept; the test set
is a seeded class-balanced sample.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from edgeweave.bench.tasks.base import (
    Item,
    Split,
    Task,
    classification_scores,
    parse_label,
    register_task,
    stratified_sample,
)
from edgeweave.prompt.sensors import EncodingSpec, downsample, encode_window, window_features
from edgeweave.prompt.templates import PromptTemplate

LABELS = tuple(f"type{i}" for i in range(10))


@register_task
class ApplianceTask(Task):
    name = "appliance"
    description = "Appliance type (10 classes) from 1 h of normalised power"
    source = "ACSF1 (UCR), aeon.datasets.load_acsf1"
    channels = ("power",)
    encoding = EncodingSpec("values", points=16)
    template = PromptTemplate(
        instruction="Identify the appliance type from one hour of its power draw (16 averages "
                    "on a 0-99 scale).",
        input_label="Power", output_label="Type", choices=LABELS)
    max_answer_tokens = 4
    test_size = 30

    def build(self, seed: int) -> Split:
        from aeon.datasets import load_acsf1

        parts = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated loader, data still shipped
            for split in ("train", "test"):
                X, y = load_acsf1(split=split)
                parts[split] = [self._item(f"{split}-{i}", X[i], f"type{y[i]}")
                                for i in range(len(y))]
        return Split(tuple(parts["train"]),
                     tuple(stratified_sample(parts["test"], self.test_size, seed)))

    def _item(self, iid: str, window: np.ndarray, label: str) -> Item:
        window = np.asarray(window, dtype=np.float64)
        x = window[0]
        # shape at two resolutions + the fraction of time above thresholds (duty cycle)
        duty = [(x > q).mean() for q in (-0.5, 0.0, 0.5, 1.0, 2.0)]
        feats = np.concatenate([window_features(window, shape_points=32), duty,
                                downsample(np.abs(np.diff(x)), 8)]).astype(np.float32)
        return Item(iid, encode_window(window, self.channels, self.encoding), label, label,
                    window, feats)

    def parse(self, text: str) -> str | None:
        return parse_label(text.replace("type ", "type"), LABELS)

    def score(self, items: Sequence[Item], preds: Sequence[str | None]) -> dict[str, float]:
        return classification_scores(items, preds)
