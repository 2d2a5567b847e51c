"""Prompts for a task's test items: template + demonstrations chosen from its train split.

Pure of any language model (only a token counter), so the demo and tests can build and show
prompts without running one. The train split is loaded into a :class:`DemonstrationStore`
keyed by the task's embedding (cheap features for sensor windows, MiniLM for text).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edgeweave.bench.tasks.base import Item, Split, Task, load_split
from edgeweave.errors import ConfigError
from edgeweave.prompt.demos import DemonstrationStore, StoreConfig
from edgeweave.prompt.policies import get_ordering
from edgeweave.prompt.sensors import EncodingSpec
from edgeweave.prompt.templates import Example, PromptTemplate, compose

DEMO_MODES = ("none", "random", "knn")


def approx_tokens(text: str) -> int:
    """Token estimate when no tokenizer is at hand (about 3 characters per token here)."""
    return (len(text) + 2) // 3


@dataclass(frozen=True)
class PromptSettings:
    demos: str = "none"
    k: int = 4
    ordering: str | None = None  # None: selection order (most similar first for knn)
    encoding: EncodingSpec | None = None  # None: the task's default encoding
    budget_tokens: int = 512
    seed: int = 0
    template: PromptTemplate | None = None  # None: the task's own template

    def __post_init__(self) -> None:
        if self.demos not in DEMO_MODES:
            raise ConfigError(f"unknown demos mode {self.demos!r}; choose one of {DEMO_MODES}")
        if self.k < 0:
            raise ConfigError(f"k must be >= 0 (got {self.k})")
        if self.ordering is not None:
            get_ordering(self.ordering)
        if self.budget_tokens <= 0:
            raise ConfigError(f"budget_tokens must be > 0 (got {self.budget_tokens})")


@dataclass(frozen=True)
class BuiltPrompt:
    item: Item
    prompt: str
    demo_ids: tuple[int, ...]


class PromptBuilder:
    """Prompts for items of ``split`` (default: the task's seeded split); demonstrations come
    from ``split.train`` only."""

    def __init__(self, task: Task, settings: PromptSettings,
                 count_tokens: Callable[[str], int] = approx_tokens,
                 split: Split | None = None) -> None:
        self.task, self.settings, self.count = task, settings, count_tokens
        self.template = settings.template or task.template
        self.split = split if split is not None else load_split(task.name, settings.seed)
        self.store: DemonstrationStore | None = None
        self._train_text: dict[int, Item] = {}
        if settings.demos != "none" and settings.k > 0:
            train = self.split.train
            emb = task.embed(train, train)
            self.store = DemonstrationStore(StoreConfig(
                dim=emb.shape[1], max_entries=max(len(train), 1), max_bytes=1 << 30,
                seed=settings.seed))
            ids = self.store.add_many(
                (self.render(it), it.answer, emb[j], it.label) for j, it in enumerate(train))
            self._train_text = dict(zip(ids, train, strict=True))

    def render(self, item: Item) -> str:
        return self.task.render(item, self.settings.encoding, self.count)

    def build(self, items: Sequence[Item]) -> list[BuiltPrompt]:
        s = self.settings
        queries = self.task.embed(self.split.train, items) if self.store and s.demos == "knn" \
            else None
        out = []
        for idx, item in enumerate(items):
            rng = np.random.default_rng([s.seed, idx])
            query = self.render(item)
            if self.store is None:
                prompt = self.template.render(query)
                out.append(BuiltPrompt(item, prompt, ()))
                continue
            q = queries[idx] if queries is not None else None
            sel = self.store.select(q, s.k, "knn" if s.demos == "knn" else "random", rng=rng)
            ranked = [Example(x.demo.input, x.demo.output) for x in sel]
            sims = [x.similarity for x in sel]
            labels = [x.demo.label for x in sel]

            def order(chosen: list[int], sims=sims, labels=labels, rng=rng) -> list[int]:
                if s.ordering is None:
                    return chosen
                perm = get_ordering(s.ordering)([sims[c] for c in chosen],
                                                [labels[c] for c in chosen], rng)
                return [chosen[p] for p in perm]

            prompt, used = compose(self.template, query, ranked, s.budget_tokens,
                                   self.count, order)
            out.append(BuiltPrompt(item, prompt, tuple(sel[i].demo.id for i in used)))
        return out


def example_prompts(task: str, n: int = 3, demos: str = "knn", seed: int = 0,
                    count_tokens: Callable[[str], int] = approx_tokens, **settings
                    ) -> list[dict]:
    """A few real test items with their prompts, for the demo and docs: id, prompt, gold
    answer, and the raw sensor window (channels x time, as lists) where there is one."""
    from edgeweave.bench.tasks.base import get_task

    t = get_task(task)
    builder = PromptBuilder(t, PromptSettings(demos=demos, seed=seed, **settings), count_tokens)
    rows = []
    for b in builder.build(builder.split.test[:n]):
        rows.append({"task": task, "id": b.item.id, "prompt": b.prompt, "answer": b.item.answer,
                     "channels": list(t.channels),
                     "window": b.item.window.tolist() if b.item.window is not None else None,
                     "demos_used": len(b.demo_ids)})
    return rows
