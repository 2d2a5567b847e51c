"""What every task provides: a seeded split, a template, a parser, a metric, a baseline.

A task turns a real data set into :class:`Item` s (the query text, the gold answer, and for
sensor tasks the raw window and a cheap feature vector). Subclasses register themselves by
name with :func:`register_task`; ``evaluate_task`` only talks to this interface. The
registry imports every module of this package but the helpers (:data:`HELPERS`), so a new
task is one new file: ``bench/tasks/<name>.py``.
"""

from __future__ import annotations

import functools
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgeweave.errors import ConfigError
from edgeweave.prompt.embed import FeatureScaler
from edgeweave.prompt.sensors import EncodingSpec, encode_window
from edgeweave.prompt.templates import PromptTemplate

if TYPE_CHECKING:
    from edgeweave.runtime.constraints import OutputFormat


@dataclass(frozen=True)
class Item:
    id: str
    query: str  # the input text in the task's default encoding
    answer: str  # gold answer as it appears in a demonstration
    label: str | None = None  # class label (classification tasks)
    window: np.ndarray | None = None  # (channels, time) for sensor tasks
    features: np.ndarray | None = None  # raw cheap features (kNN demos, baseline)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Split:
    train: tuple[Item, ...]
    test: tuple[Item, ...]

    def __post_init__(self) -> None:
        overlap = {i.id for i in self.train} & {i.id for i in self.test}
        if overlap:
            raise ConfigError(f"train and test share items: {sorted(overlap)[:5]}")


class Task(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    metric: ClassVar[str] = "accuracy"  # the headline key of ``score``
    source: ClassVar[str] = ""
    template: ClassVar[PromptTemplate]
    channels: ClassVar[tuple[str, ...]] = ()
    encoding: ClassVar[EncodingSpec | None] = None
    max_answer_tokens: ClassVar[int] = 5
    test_size: ClassVar[int] = 24
    sensor: ClassVar[bool] = True

    @abstractmethod
    def build(self, seed: int) -> Split:
        """The fixed split for ``seed`` (deterministic; train and test disjoint)."""

    @abstractmethod
    def parse(self, text: str) -> str | None:
        """Model output -> normalised prediction (``None`` if nothing usable)."""

    @abstractmethod
    def score(self, items: Sequence[Item], preds: Sequence[str | None]) -> dict[str, float]:
        """Metrics over a test set; includes ``self.metric``."""

    # -- shared defaults ------------------------------------------------------------------
    def answer_format(self) -> OutputFormat | None:
        """What a valid answer looks like, for constrained decoding: one of the template's
        choices by default (``None`` for a free-form task).

        The leading space is part of the format because the prompt ends with
        ``<output_label>:`` and every demonstration continues it with ``" <answer>"``: forcing
        the label without it would put the model on tokens it never saw there.
        """
        from edgeweave.runtime.constraints import OutputFormat

        if not self.template.choices:
            return None
        return OutputFormat.labels(tuple(f" {c}" for c in self.template.choices))

    def render(self, item: Item, encoding: EncodingSpec | None = None,
               count_tokens: Callable[[str], int] | None = None) -> str:
        """The item's input text, re-encoded from its window when an encoding is given."""
        if encoding is None or item.window is None:
            return item.query
        return self.wrap(item, encode_window(item.window, self.channels, encoding, count_tokens))

    def wrap(self, item: Item, encoded: str) -> str:
        """Add non-window context (e.g. time of day) around an encoded window."""
        return encoded

    def embed(self, train: Sequence[Item], items: Sequence[Item]) -> np.ndarray:
        """Unit vectors for kNN: features standardised with train statistics."""
        scaler = FeatureScaler.fit(np.stack([i.features for i in train]))
        return scaler(np.stack([i.features for i in items]))

    def baseline(self, split: Split) -> dict[str, float]:
        """Non-LLM reference on the same features: 1-nearest-neighbour (cosine)."""
        tr, te = self.embed(split.train, split.train), self.embed(split.train, split.test)
        nearest = np.argmax(te @ tr.T, axis=1)
        preds = [split.train[int(j)].answer for j in nearest]
        return self.score(split.test, [self.parse(p) for p in preds])


_TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    _TASKS[cls.name] = cls
    return cls


def task_names() -> list[str]:
    _import_all()
    return sorted(_TASKS)


def get_task(name: str) -> Task:
    _import_all()
    if name not in _TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of {sorted(_TASKS)} "
                          "(edgeweave tasks list)")
    return _TASKS[name]()


@functools.lru_cache(maxsize=32)
def load_split(name: str, seed: int = 0) -> Split:
    """Build (once per process) the split of a task."""
    return get_task(name).build(seed)


# Modules of this package that hold shared machinery, not tasks (they register none).
HELPERS = frozenset({"base", "evaluate", "prompts", "tuning"})


def task_modules() -> list[str]:
    """The task modules of this package, found in its folder (as ``cli/app.py`` finds verbs)."""
    import pkgutil

    from edgeweave.bench import tasks

    return sorted(f"{tasks.__name__}.{m.name}" for m in pkgutil.iter_modules(tasks.__path__)
                  if m.name not in HELPERS and not m.name.startswith("_"))


def _import_all() -> None:
    import importlib

    for module in task_modules():  # each registers its task(s) on import
        importlib.import_module(module)


# -- helpers shared by tasks ---------------------------------------------------------------
def stratified_sample(items: Sequence[Item], n: int, seed: int) -> list[Item]:
    """``n`` items, labels round-robin in a seeded order (keeps classes balanced)."""
    rng = np.random.default_rng(seed)
    by: dict[str | None, list[Item]] = {}
    for i in items:
        by.setdefault(i.label, []).append(i)
    pools = [list(np.array(v, dtype=object)[rng.permutation(len(v))]) for _, v in sorted(
        by.items(), key=lambda kv: str(kv[0]))]
    out: list[Item] = []
    while len(out) < min(n, len(items)):
        for p in pools:
            if p and len(out) < n:
                out.append(p.pop(0))
    return out


def parse_label(text: str, labels: Sequence[str]) -> str | None:
    """The first label mentioned in ``text`` (whole words, case-insensitive)."""
    low = text.lower()
    best: tuple[int, str] | None = None
    for lab in sorted(labels, key=len, reverse=True):
        m = re.search(rf"(?<![\w-]){re.escape(lab.lower())}(?![\w-])", low)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), lab)
    return best[1] if best else None


def classification_scores(items: Sequence[Item], preds: Sequence[str | None]
                          ) -> dict[str, float]:
    n = len(items)
    if n == 0:
        return {"accuracy": 0.0, "invalid_rate": 0.0, "macro_f1": 0.0}
    gold = [i.label for i in items]
    correct = sum(p == g for p, g in zip(preds, gold, strict=True))
    f1s = []
    for lab in sorted({g for g in gold if g is not None}):
        tp = sum(p == lab and g == lab for p, g in zip(preds, gold, strict=True))
        fp = sum(p == lab and g != lab for p, g in zip(preds, gold, strict=True))
        fn = sum(p != lab and g == lab for p, g in zip(preds, gold, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"accuracy": correct / n, "invalid_rate": sum(p is None for p in preds) / n,
            "macro_f1": float(np.mean(f1s)) if f1s else 0.0}
