"""Automatic prompt templates: propose candidates, score them on validation items, keep one.

Candidates come from two sources:

* **structural variants** of the task's own template (without the list of possible answers,
  generic labels, an explicit one-answer rule): formats a small model may follow better;
* **induced instructions** (instruction induction, Honovich et al. 2022; the template search of
  LM-BFF, Gao et al. 2021): the model itself is shown a few labelled train examples and asked
  for the instruction that produced them, sampled several times with a seed each.

Every candidate is scored with :func:`evaluate_task` on a *validation split* carved from the
task's train items (demonstrations for it come from the remaining train items), so the test
items are never seen while choosing. :func:`tune_prompt` returns a :class:`TuningResult` that
records the ids it scored; :func:`save_tuning` writes it atomically as ``template.json``, which
``tasks eval --template`` reads back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeweave.bench.tasks.base import Split, get_task, load_split, stratified_sample
from edgeweave.errors import ConfigError
from edgeweave.paths import atomic_write_json
from edgeweave.prompt.templates import PromptTemplate

KIND = "edgeweave-prompt-template"
INDUCTION_EXAMPLES = 3
INDUCTION_TOKENS = 40


@dataclass(frozen=True)
class Candidate:
    template: PromptTemplate
    origin: str  # "task", "structural:<what>" or "induced:<seed>"


@dataclass(frozen=True)
class Scored:
    candidate: Candidate
    score: float
    invalid_rate: float


@dataclass(frozen=True)
class TuningResult:
    task: str
    model: str
    best: Scored
    scored: tuple[Scored, ...]
    validation_ids: tuple[str, ...]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND, "version": 1, "task": self.task, "model": self.model,
                "template": self.best.candidate.template.to_dict(),
                "origin": self.best.candidate.origin, "validation_score": self.best.score,
                "candidates": [{"origin": s.candidate.origin, "score": s.score,
                                "invalid_rate": s.invalid_rate,
                                "template": s.candidate.template.to_dict()}
                               for s in self.scored],
                "validation_ids": list(self.validation_ids), "settings": self.settings}


def validation_split(task: str, seed: int = 0, n_val: int = 16) -> Split:
    """``n_val`` train items (labels balanced) as the test side; the rest of train supplies
    demonstrations. Disjoint from the task's test items by construction."""
    if n_val <= 0:
        raise ConfigError(f"the validation split needs at least 1 item (got {n_val})")
    train = load_split(task, seed).train
    if len(train) <= n_val:
        raise ConfigError(f"task {task!r} has {len(train)} train items: ask for fewer "
                          f"validation items than that (got {n_val})")
    val = stratified_sample(train, n_val, seed + 1)
    ids = {i.id for i in val}
    return Split(tuple(i for i in train if i.id not in ids), tuple(val))


def structural_variants(base: PromptTemplate) -> list[Candidate]:
    out = [Candidate(base, "task")]
    if base.choices:
        out.append(Candidate(replace(base, choices=()), "structural:no-choices"))
    out.append(Candidate(replace(base, input_label="Input", output_label="Answer"),
                         "structural:generic-labels"))
    rule = " Reply with one of the possible answers only." if base.choices else \
        " Reply with the answer only."
    out.append(Candidate(replace(base, instruction=base.instruction.rstrip() + rule),
                         "structural:answer-only"))
    return out


def induction_prompt(task: str, split: Split, base: PromptTemplate, seed: int,
                     n_examples: int = INDUCTION_EXAMPLES) -> str:
    """Shown a few labelled examples, the model writes the instruction that fits them."""
    import numpy as np

    rng = np.random.default_rng(seed)
    picks = rng.choice(len(split.train), size=min(n_examples, len(split.train)),
                       replace=False)
    t = get_task(task)
    shots = "\n\n".join(f"{base.input_label}: {t.render(split.train[int(j)])}\n"
                        f"{base.output_label}: {split.train[int(j)].answer}" for j in picks)
    return ("Each example below gives an input and the right output.\n\n" + shots +
            "\n\nThe instruction that was given for these examples, in one sentence:")


def induced_instructions(task: str, lm: Any, split: Split, base: PromptTemplate, n: int,
                         engine_factory: Any = None, seed: int = 0) -> list[Candidate]:
    """``n`` instructions sampled from the model (temperature 0.8, a seed each); empty or
    repeated ones are dropped, so fewer than ``n`` may come back."""
    from edgeweave.bench.tasks.evaluate import default_engine
    from edgeweave.runtime.generate import SamplingParams, generate

    engine = (engine_factory or default_engine)(lm)
    seen, out = {base.instruction.strip().lower()}, []
    for j in range(n):
        # as many examples as the context holds next to the answer (a small model's is short)
        prompt = next((p for m in range(INDUCTION_EXAMPLES, 0, -1)
                       if len(lm.tokenizer.encode(p := induction_prompt(
                           task, split, base, seed + j, m))) + INDUCTION_TOKENS
                       <= engine.max_len), None)
        if prompt is None:
            continue
        params = SamplingParams(max_tokens=INDUCTION_TOKENS, temperature=0.8, top_p=0.95,
                                seed=seed + j, stop=("\n",))
        text = generate(engine, lm.tokenizer, prompt, params).text.strip().strip('"')
        if len(text.split()) < 3 or text.lower() in seen:
            continue
        seen.add(text.lower())
        out.append(Candidate(replace(base, instruction=text), f"induced:{seed + j}"))
    return out


def tune_prompt(task: str, lm: Any, *, demos: str = "knn", k: int = 4, n_val: int = 16,
                n_induced: int = 4, seed: int = 0, constrained: bool = False,
                budget_tokens: int = 512, engine_factory: Any = None,
                progress: Any = None) -> TuningResult:
    """Score every candidate on the validation split and keep the best (ties: the earlier
    candidate, so the task's own template wins a tie)."""
    from edgeweave.bench.tasks.evaluate import evaluate_task

    t = get_task(task)
    split = validation_split(task, seed, n_val)
    cands = structural_variants(t.template)
    cands += induced_instructions(task, lm, split, t.template, n_induced, engine_factory, seed)
    scored = []
    for j, c in enumerate(cands):
        res = evaluate_task(task, lm, demos=demos, k=k, seed=seed, budget_tokens=budget_tokens,
                            engine_factory=engine_factory, constrained=constrained,
                            template=c.template, split=split)
        scored.append(Scored(c, float(res["score"]), float(res.get("invalid_rate", 0.0))))
        if progress:
            progress(j + 1, len(cands))
    best = max(scored, key=lambda s: s.score)  # max keeps the first of equal scores
    return TuningResult(task, getattr(lm, "name", "?"), best, tuple(scored),
                        tuple(i.id for i in split.test),
                        {"demos": demos, "k": k, "n_val": n_val, "n_induced": n_induced,
                         "seed": seed, "constrained": constrained,
                         "budget_tokens": budget_tokens})


def save_tuning(result: TuningResult, out_dir: str | Path) -> Path:
    """``<out_dir>/<task>/template.json``, next to the task's other results."""
    path = Path(out_dir) / result.task / "template.json"
    atomic_write_json(path, result.to_dict())
    return path


def load_template(path: str | Path, task: str | None = None) -> PromptTemplate:
    """The template in a ``template.json`` (or a bare template object); refuses a file that
    was tuned for another task."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no template file at {p}: run edgeweave tasks tune-prompt "
                          "first, or pass the path it printed") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the template file {p}: {e}") from None
    if isinstance(doc, dict) and doc.get("kind") == KIND:
        if task is not None and doc.get("task") != task:
            raise ConfigError(f"{p} was tuned for task {doc.get('task')!r}, not {task!r}: "
                              "pass the template of this task")
        doc = doc.get("template")
    return PromptTemplate.from_dict(doc)
