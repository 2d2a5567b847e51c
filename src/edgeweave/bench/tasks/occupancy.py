"""Room occupancy from indoor climate sensors: river's Occupancy stream.

The stream (Candanedo & Feldheim 2016, one reading every 16 min over 7 days) carries
temperature, humidity, light and CO2 but not the occupancy column of the original data set.
The label is therefore the lights-on state (light > 200 lux at the window's last reading), which
the source study found to track occupancy almost perfectly; light itself is withheld from the
prompt, so the model must infer it from time of day, CO2, temperature and humidity.
Windows are 4 consecutive readings (about 1 h); the split is by 3-hour block (seeded), so no
reading appears in both train and test windows.
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

LABELS = ("occupied", "empty")
CHANNELS = ("temp", "humidity", "co2")
WINDOW = 4
BLOCK_S = 3 * 3600
LIGHT_ON_LUX = 200.0


def _read() -> tuple[list, np.ndarray, np.ndarray]:
    from river.drift.datasets import Occupancy

    times, rows, light = [], [], []
    for x, y in Occupancy():
        times.append(x["time"])
        rows.append([y["V1"], y["V2"], y["V4"]])  # temperature, humidity, CO2
        light.append(y["V3"])
    return times, np.asarray(rows, dtype=np.float64).T, np.asarray(light, dtype=np.float64)


@register_task
class OccupancyTask(Task):
    name = "occupancy"
    description = "Room occupied or empty from time, temperature, humidity, CO2 (1 h window)"
    source = "Occupancy (Candanedo 2016) via river.drift.datasets.Occupancy; label = lights on"
    channels = CHANNELS
    encoding = EncodingSpec("raw_values", points=WINDOW, decimals=1)
    template = PromptTemplate(
        instruction="Is the office room occupied? Four readings, 16 minutes apart: temperature "
                    "(C), humidity (%), CO2 (ppm).",
        input_label="Readings", output_label="Room", choices=LABELS)
    max_answer_tokens = 4
    test_size = 24

    def build(self, seed: int) -> Split:
        times, series, light = _read()
        t0 = times[0]
        block = [int((t - t0).total_seconds() // BLOCK_S) for t in times]
        blocks = sorted(set(block))
        rng = np.random.default_rng(seed)
        test_blocks = set(rng.choice(blocks, size=int(round(0.4 * len(blocks))), replace=False)
                          .tolist())
        train, test = [], []
        for end in range(WINDOW, len(times) + 1):
            start = end - WINDOW
            if block[start] != block[end - 1]:
                continue  # windows never straddle blocks, so splits share no reading
            w = series[:, start:end]
            label = "occupied" if light[end - 1] > LIGHT_ON_LUX else "empty"
            when = times[end - 1]
            it = Item(f"w{start}", "", label, label, w, self._features(w, when),
                      {"time": when.strftime("%a %H:%M")})
            it = Item(it.id, self.wrap(it, encode_window(w, CHANNELS, self.encoding)),
                      label, label, w, it.features, it.meta)
            (test if block[start] in test_blocks else train).append(it)
        return Split(tuple(train), tuple(stratified_sample(test, self.test_size, seed)))

    @staticmethod
    def _features(w: np.ndarray, when) -> np.ndarray:
        hour = when.hour + when.minute / 60
        day = [np.cos(2 * np.pi * hour / 24), np.sin(2 * np.pi * hour / 24),
               1.0 if when.weekday() >= 5 else 0.0]
        return np.concatenate([window_features(w, shape_points=2), day]).astype(np.float32)

    def wrap(self, item: Item, encoded: str) -> str:
        return f"{item.meta['time']}; {encoded}"

    def parse(self, text: str) -> str | None:
        return parse_label(text, LABELS)

    def score(self, items: Sequence[Item], preds: Sequence[str | None]) -> dict[str, float]:
        return classification_scores(items, preds)
