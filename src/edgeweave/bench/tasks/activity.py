"""Human activity from a wrist-worn smartwatch: BasicMotions (aeon).

Four activities (standing, walking, running, badminton), 6 channels (3-axis accelerometer and
gyroscope), 100 samples per window (10 s at 10 Hz). The UEA train/test split (40/40) is kept;
the test set is a seeded class-balanced sample of it.
"""

from __future__ import annotations

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
from edgeweave.prompt.sensors import EncodingSpec, encode_window, window_features
from edgeweave.prompt.templates import PromptTemplate

LABELS = ("standing", "walking", "running", "badminton")
CHANNELS = ("ax", "ay", "az", "gx", "gy", "gz")  # accelerometer, gyroscope axes


@register_task
class ActivityTask(Task):
    name = "activity"
    description = "Human activity (4 classes) from accelerometer + gyroscope windows"
    source = "BasicMotions (UEA), aeon.datasets.load_basic_motions"
    channels = CHANNELS
    encoding = EncodingSpec("meansd", decimals=0)
    template = PromptTemplate(
        instruction="Classify the activity of a person from 10 s of smartwatch motion readings "
                    "(accelerometer a, gyroscope g; per axis mean±sd).",
        input_label="Readings", output_label="Activity", choices=LABELS)
    max_answer_tokens = 4

    def build(self, seed: int) -> Split:
        from aeon.datasets import load_basic_motions

        parts = {}
        for split in ("train", "test"):
            X, y = load_basic_motions(split=split)
            parts[split] = [self._item(f"{split}-{i}", X[i], str(y[i]))
                            for i in range(len(y))]
        test = stratified_sample(parts["test"], self.test_size, seed)
        return Split(tuple(parts["train"]), tuple(test))

    def _item(self, iid: str, window: np.ndarray, label: str) -> Item:
        window = np.asarray(window, dtype=np.float64)
        return Item(iid, encode_window(window, CHANNELS, self.encoding), label, label,
                    window, window_features(window))

    def parse(self, text: str) -> str | None:
        return parse_label(text, LABELS)

    def score(self, items: Sequence[Item], preds: Sequence[str | None]) -> dict[str, float]:
        return classification_scores(items, preds)
