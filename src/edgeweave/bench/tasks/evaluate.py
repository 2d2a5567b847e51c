"""Run a task's test items through a model and score them.

``evaluate_task`` is the one entry point the CLI verbs (``edgeweave tasks eval``,
``edgeweave eval --task``) and the benchmark runner call. Generation is greedy through our own
decode loop; every answer's prompt tokens and latency come from the response metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from edgeweave.bench.tasks.base import Split, get_task, load_split
from edgeweave.bench.tasks.prompts import PromptBuilder, PromptSettings
from edgeweave.errors import ConfigError
from edgeweave.prompt.sensors import EncodingSpec
from edgeweave.prompt.templates import PromptTemplate


def default_engine(lm: Any) -> Any:
    """A whole-model local engine; fp32 models get the numpy GEMV decode path."""
    import torch

    from edgeweave.runtime.engine import LocalEngine
    from edgeweave.runtime.fast import accelerate_decode

    if next(lm.model.parameters()).dtype is torch.float32:
        accelerate_decode(lm.model)
    return LocalEngine(lm.model)


def evaluate_task(task: str, lm: Any, demos: str = "none", limit: int | None = None,
                  seed: int = 0, *, k: int = 4, ordering: str | None = None,
                  encoding: EncodingSpec | str | None = None, budget_tokens: int = 512,
                  engine_factory: Callable[[Any], Any] | None = None,
                  return_predictions: bool = False, constrained: bool = False,
                  template: PromptTemplate | None = None, split: Split | None = None,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Evaluate ``lm`` (a ``models.LoadedModel`` or an artifact loaded the same way) on a task.

    ``demos``: ``none`` (zero-shot), ``random`` or ``knn`` demonstrations from the task's train
    split, at most ``k``, within ``budget_tokens`` for the whole prompt; ``ordering`` arranges
    them (``prompt.policies.orderings()``; None keeps selection order). ``encoding`` overrides
    the task's sensor encoding (a name or an ``EncodingSpec``). ``engine_factory(lm)`` builds
    the ``LogitsEngine`` (default: :func:`default_engine`). ``constrained`` decodes within the
    task's :meth:`~edgeweave.bench.tasks.base.Task.answer_format` (a label set, a number, a
    year or ``unknown``), so every answer parses; a free-form task is refused. ``template``
    replaces the task's own (e.g. one chosen by ``tasks tune-prompt``); ``split`` replaces
    its seeded split (tuning scores a validation split carved from the train items).

    Returns the task's metrics (``score`` is the headline metric named by ``metric``), plus
    ``n``, ``mean_prompt_tokens``, ``mean_latency_s`` (whole answer), ``mean_ttft_s`` and
    ``mean_demos``; with ``return_predictions`` also per-item rows.
    """
    from edgeweave.runtime.generate import SamplingParams, generate

    t = get_task(task)
    if limit is not None and limit <= 0:
        raise ConfigError(f"limit must be > 0 (got {limit})")
    if isinstance(encoding, str):
        encoding = EncodingSpec(encoding)
    settings = PromptSettings(demos=demos, k=k, ordering=ordering, encoding=encoding,
                              budget_tokens=budget_tokens, seed=seed, template=template)

    def count_tokens(text: str) -> int:
        return len(lm.tokenizer.encode(text))

    builder = PromptBuilder(t, settings, count_tokens, split)
    items = builder.split.test[:limit]
    built = builder.build(items)
    engine = (engine_factory or default_engine)(lm)
    output = t.answer_format() if constrained else None
    if constrained and output is None:
        raise ConfigError(f"task {task!r} has no answer format to constrain to: run it "
                          "without --constrained")
    # the format ends a constrained answer itself; the token cap only guards free text
    max_tokens = max(t.max_answer_tokens, 16) if output is not None else t.max_answer_tokens
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=("\n",),
                            output=output)
    preds, rows = [], []
    prompt_tokens = latency = ttft = n_demos = 0.0
    t0 = time.perf_counter()
    for j, b in enumerate(built):
        res = generate(engine, lm.tokenizer, b.prompt, params)
        pred = t.parse(res.text)
        preds.append(pred)
        prompt_tokens += res.metrics.prompt_tokens
        latency += res.metrics.total_s
        ttft += res.metrics.ttft_s
        n_demos += len(b.demo_ids)
        if return_predictions:
            rows.append({"id": b.item.id, "output": res.text, "prediction": pred,
                         "answer": b.item.answer, "prompt_tokens": res.metrics.prompt_tokens,
                         "latency_s": res.metrics.total_s})
        if progress:
            progress(j + 1, len(built))
    n = max(len(built), 1)
    metrics = t.score(items, preds)
    out: dict[str, Any] = {
        "task": task, "model": getattr(lm, "name", "?"), "demos": demos, "k": k,
        "ordering": ordering, "constrained": constrained,
        "template": template.to_dict() if template is not None else None,
        "encoding": (encoding or t.encoding).name if (encoding or t.encoding) else None,
        "seed": seed, "metric": t.metric,
        "score": metrics[t.metric], **metrics, "n": len(built),
        "mean_prompt_tokens": prompt_tokens / n, "mean_latency_s": latency / n,
        "mean_ttft_s": ttft / n, "mean_demos": n_demos / n,
        "wall_s": time.perf_counter() - t0,
    }
    if return_predictions:
        out["predictions"] = rows
    return out


def baseline_task(task: str, seed: int = 0, limit: int | None = None) -> dict[str, Any]:
    """The task's non-LLM reference (nearest neighbour on the same features, or lexical for
    QA) on the same test items."""
    from edgeweave.bench.tasks.base import Split

    t = get_task(task)
    split = load_split(task, seed)
    sub = Split(split.train, split.test[:limit])
    metrics = t.baseline(sub)
    return {"task": task, "demos": "baseline", "metric": t.metric, "score": metrics[t.metric],
            **metrics, "n": len(sub.test)}
