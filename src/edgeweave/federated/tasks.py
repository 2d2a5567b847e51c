"""Federated tasks: per-client non-IID training examples and a held-out evaluation.

``iot`` mixes two IoT tasks of the task suite (``edgeweave.bench.tasks``): smartwatch
activity (BasicMotions, 4 classes) and room occupancy (UCI Occupancy, 2 classes). Every
client is one "home" with its own task mix and label skew (Dirichlet partitioning), the
held-out set is the suite's balanced test split of both tasks. ``pattern`` is a small
synthetic next-token task for tiny random-weight models (tests, smoke runs).
Accuracy is the argmax of the next-token logits over the first tokens of the task's
labels (distinct for both tasks with the SmolLM2 tokenizer, checked at build time).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgeweave.errors import ConfigError
from edgeweave.finetune.data import IGNORE, Example, collate, prompt_answer


@dataclass(frozen=True)
class EvalItem:
    example: Example  # prompt + gold answer (loss on the answer)
    choices: tuple[int, ...]  # first token of each label
    gold: int  # index into choices
    group: str  # sub-task name, for per-task accuracy


@dataclass(frozen=True)
class TaskData:
    clients: tuple[tuple[Example, ...], ...]
    heldout: tuple[EvalItem, ...]
    description: str
    # per sub-task, the first tokens of its labels (public task metadata; empty = free text)
    label_sets: tuple[tuple[int, ...], ...] = ()


TASKS: dict[str, Callable[..., TaskData]] = {}


def register(name: str) -> Callable[[Callable[..., TaskData]], Callable[..., TaskData]]:
    def deco(fn: Callable[..., TaskData]) -> Callable[..., TaskData]:
        TASKS[name] = fn
        return fn
    return deco


def dirichlet_partition(labels: Sequence[str], n_clients: int, alpha: float,
                        rng: np.random.Generator) -> list[list[int]]:
    """Indices per client; per label, shares drawn from Dirichlet(alpha) (small alpha =
    strongly non-IID). Every client gets at least one example."""
    out: list[list[int]] = [[] for _ in range(n_clients)]
    for lab in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == lab]
        rng.shuffle(idx)
        shares = rng.dirichlet([alpha] * n_clients)
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for c, part in enumerate(np.split(np.array(idx), cuts)):
            out[c].extend(int(i) for i in part)
    for c in range(n_clients):  # steal one from the largest client if empty
        if not out[c]:
            donor = max(range(n_clients), key=lambda k: len(out[k]))
            out[c].append(out[donor].pop())
    return out


PROMPTS = {"activity": ("Smartwatch 10 s: {q}\nActivity:", "motion"),
           "occupancy": ("Room sensors: {q}\nRoom is:", "home")}


@register("iot")
def iot_task(tokenizer, n_clients: int, seq_len: int = 96, alpha: float = 0.5,
             seed: int = 0) -> TaskData:
    from edgeweave.bench.tasks.base import get_task, load_split

    rng = np.random.default_rng(seed)
    train_items: list[tuple[str, str, str]] = []  # (task, query, label)
    heldout: list[EvalItem] = []
    label_sets: list[tuple[int, ...]] = []
    for name in ("activity", "occupancy"):
        task, split = get_task(name), load_split(name, seed)
        choices = tuple(task.template.choices)
        firsts = tuple(tokenizer.encode(" " + c)[0] for c in choices)
        if len(set(firsts)) != len(firsts):
            raise ConfigError(f"labels of {name} share a first token with this tokenizer")
        label_sets.append(firsts)
        tmpl = PROMPTS[name][0]
        for it in split.train:
            train_items.append((name, tmpl.format(q=it.query), it.answer))
        for it in split.test:
            ex = prompt_answer(tokenizer, tmpl.format(q=it.query), " " + it.answer, seq_len)
            heldout.append(EvalItem(ex, firsts, choices.index(it.answer), name))
    # Non-IID homes: skew over (task, label) pairs, so a home sees few activities or only
    # occupied/empty rooms, and some homes have no smartwatch data at all.
    keys = [f"{t}:{y}" for t, _, y in train_items]
    parts = dirichlet_partition(keys, n_clients, alpha, rng)
    clients = tuple(tuple(prompt_answer(tokenizer, train_items[i][1], " " + train_items[i][2],
                                        seq_len) for i in part) for part in parts)
    return TaskData(clients, tuple(heldout),
                    f"iot: activity+occupancy, {len(train_items)} train / {len(heldout)} "
                    f"held-out, Dirichlet({alpha}) over (task,label) for {n_clients} homes",
                    tuple(label_sets))


@register("pattern")
def pattern_task(tokenizer, n_clients: int, seq_len: int = 12, alpha: float = 0.5,
                 seed: int = 0) -> TaskData:
    """Synthetic: after a class token c in {3..6} the sequence counts up with stride c-2.
    Clients hold skewed class mixes; held-out asks for the token after the prompt."""
    rng = np.random.default_rng(seed)

    def make(c: int, s: int) -> Example:
        body = [10 + (s + j * (c - 2)) % 20 for j in range(seq_len - 1)]
        return Example(tuple([c, *body]), n_prompt=4)

    labels, exs = [], []
    for _ in range(24 * n_clients):
        c, s = int(rng.integers(3, 7)), int(rng.integers(0, 20))
        labels.append(str(c))
        exs.append(make(c, s))
    parts = dirichlet_partition(labels, n_clients, alpha, rng)
    held = []
    for _ in range(24):
        c, s = int(rng.integers(3, 7)), int(rng.integers(0, 20))
        ex = make(c, s)
        nxt = ex.ids[4]
        choices = tuple(10 + (nxt - 10 + d) % 20 for d in range(4))
        held.append(EvalItem(ex, choices, 0, "pattern"))
    return TaskData(tuple(tuple(exs[i] for i in p) for p in parts), tuple(held),
                    f"pattern: synthetic, {n_clients} clients")


@functools.lru_cache(maxsize=8)
def cached_task(name: str, model: str, n_clients: int, seq_len: int, alpha: float,
                seed: int) -> TaskData:
    """Build a task once per process (the tokenizer comes from the model folder)."""
    from edgeweave.models.catalog import resolve
    from edgeweave.models.tokenizer import Tokenizer

    if name not in TASKS:
        raise ConfigError(f"unknown federated task {name!r}; choose from {sorted(TASKS)}")
    _, folder = resolve(model)
    return TASKS[name](Tokenizer(folder), n_clients, seq_len=seq_len, alpha=alpha, seed=seed)


@torch.no_grad()
def evaluate(model: nn.Module, items: Sequence[EvalItem], start: int = 0, cache=None,
             batch_size: int = 16) -> dict[str, float]:
    """Held-out answer loss and label accuracy (overall and per group)."""
    from edgeweave.finetune.train import hidden_in, run_from

    was = model.training
    model.eval()
    tot, n = 0.0, 0
    hits: dict[str, list[int]] = {}
    for i in range(0, len(items), batch_size):
        batch = items[i:i + batch_size]
        exs = [it.example for it in batch]
        ids, labels = collate(exs)
        if cache is not None:
            h = run_from(model, cache.batch(model, exs, range(len(exs))), cache.start)
        else:
            h = run_from(model, hidden_in(model, ids, start), start)
        mask = labels != IGNORE
        logits = model.head(h[mask]).float()
        tot += float(torch.nn.functional.cross_entropy(logits, labels[mask], reduction="sum"))
        n += int(mask.sum())
        for row, it in enumerate(batch):
            pos = it.example.n_prompt - 1  # predicts the first answer token
            lg = model.head(h[row, pos]).float()[list(it.choices)]
            hits.setdefault(it.group, []).append(int(int(torch.argmax(lg)) == it.gold))
    model.train(was)
    out = {"loss": tot / max(n, 1),
           "accuracy": float(np.mean([x for v in hits.values() for x in v]))}
    out.update({f"accuracy_{g}": float(np.mean(v)) for g, v in hits.items()})
    return out
