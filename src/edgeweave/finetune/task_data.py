"""Supervised examples from IoT tasks' train splits, prompted the way evaluation prompts.

``finetune --data task:NAME`` trains on a task's zero-shot prompts. An adapter trained that
way was *worse* with demonstrations in its prompt than without (stop 24's table: activity 0.92
zero-shot, 0.75 with kNN demos): the prompts it is asked at test time are not the ones it
learned. ``task:NAME:knn`` writes each train item's prompt with kNN demonstrations, as
``tasks eval --demos knn`` and the demo build them. The demonstrations for an item come from
the *other* half of the train split (two folds), so no item is its own demonstration; test
items are never touched. ``task:A,B,C`` mixes several tasks into one adapter.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeweave.errors import ConfigError
from edgeweave.finetune.data import Example

PREFIX = "task:"
DEMO_MODES = ("none", "knn")


@dataclass(frozen=True)
class TaskData:
    """Which tasks' train splits, and how their prompts carry demonstrations."""

    tasks: tuple[str, ...]
    demos: str = "none"
    k: int = 4
    ordering: str | None = None
    budget_tokens: int = 512

    def __post_init__(self) -> None:
        from edgeweave.bench.tasks import task_names

        if not self.tasks:
            raise ConfigError("task data names no task: write task:NAME[,NAME...][:knn]")
        unknown = sorted(set(self.tasks) - set(task_names()))
        if unknown:
            raise ConfigError(f"unknown task(s) {unknown} in the training data; choose from "
                              f"{task_names()}")
        if self.demos not in DEMO_MODES:
            raise ConfigError(f"task data demonstrations {self.demos!r} unknown; write "
                              "task:NAME (zero-shot prompts) or task:NAME:knn")

    @classmethod
    def parse(cls, source: str) -> TaskData:
        """``task:NAME[,NAME...][:knn]``."""
        if not source.startswith(PREFIX):
            raise ConfigError(f"{source!r} is not task data: write task:NAME[,NAME...][:knn]")
        names, _, demos = source.removeprefix(PREFIX).partition(":")
        tasks = tuple(n.strip() for n in names.split(",") if n.strip())
        return cls(tasks, demos or "none")

    def spelling(self) -> str:
        return PREFIX + ",".join(self.tasks) + ("" if self.demos == "none" else f":{self.demos}")


def task_examples(tokenizer, data: TaskData | str, seq_len: int, limit: int) -> list[Example]:
    """Up to ``limit`` examples per task from its *train* split: the prompt, then the gold
    answer as a demonstration writes it (the loss falls on the answer only). Several tasks
    are interleaved, so every batch mixes them."""
    from edgeweave.finetune.data import prompt_answer

    spec = TaskData.parse(data) if isinstance(data, str) else data
    per_task = [[prompt_answer(tokenizer, prompt, " " + answer, seq_len)
                 for prompt, answer in _prompts(tokenizer, task, spec)[:limit]]
                for task in spec.tasks]
    out: list[Example] = []
    for row in range(max(len(p) for p in per_task)):
        out += [p[row] for p in per_task if row < len(p)]
    return out


def _prompts(tokenizer, task: str, spec: TaskData) -> list[tuple[str, str]]:
    from edgeweave.bench.tasks import get_task, load_split
    from edgeweave.bench.tasks.base import Split
    from edgeweave.bench.tasks.prompts import PromptBuilder, PromptSettings

    t = get_task(task)
    train = load_split(task).train
    if spec.demos == "none":
        return [(t.template.render(t.render(i)), i.answer) for i in train]
    if len(train) < 2:
        raise ConfigError(f"task {task!r} has {len(train)} train item(s): demonstrations need "
                          "two folds; train on task:NAME without :knn")
    settings = PromptSettings(demos=spec.demos, k=spec.k, ordering=spec.ordering,
                              budget_tokens=spec.budget_tokens)

    def count(text: str) -> int:
        return len(tokenizer.encode(text))

    folds = (train[0::2], train[1::2])
    built = {}
    for j, fold in enumerate(folds):
        builder = PromptBuilder(t, settings, count, Split(folds[1 - j], fold))
        built.update({b.item.id: b.prompt for b in builder.build(fold)})
    return [(built[i.id], i.answer) for i in train]  # train order, as zero-shot keeps it
