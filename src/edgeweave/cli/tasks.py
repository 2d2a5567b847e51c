"""``edgeweave tasks``: list the IoT task suite and evaluate a model or artifact on a task."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgeweave.cli.common import backend_option, console, table, variant_option
from edgeweave.models.catalog import DEFAULT_MODEL


def load_model_or_artifact(model: str | None, artifact: str | None):
    """A ``LoadedModel`` from a bundled name/folder/GGUF, or from a compression artifact."""
    from edgeweave.errors import ConfigError

    if model and artifact:
        raise ConfigError("give --model or --artifact, not both")
    if artifact:
        from edgeweave.compress import load_artifact

        return load_artifact(artifact)
    from edgeweave.models import load

    return load(model or DEFAULT_MODEL)


def register(app: typer.Typer) -> None:
    tasks_app = typer.Typer(help="IoT task suite: real sensor data and grounded QA.",
                            no_args_is_help=True)
    app.add_typer(tasks_app, name="tasks")
    tasks_app.command("list")(list_cmd)
    tasks_app.command("eval")(eval_cmd)
    tasks_app.command("tune-prompt")(tune_cmd)


def list_cmd() -> None:
    """Show the tasks, their headline metric and data source."""
    from edgeweave.bench.tasks import describe

    rows = describe()
    console.print(table("edgeweave tasks", ["name", "metric", "test items", "description",
                                             "source"],
                        [[r["name"], r["metric"], r["test_items"], r["description"],
                          r["source"]] for r in rows]))


# Options `tasks eval` and `tasks tune-prompt` share: the task, the model, the prompt's
# demonstrations and budget, the seed.
_TASK = typer.Option(..., "--task", help="Task name (edgeweave tasks list).")
_MODEL = typer.Option(None, "--model", "-m",
                      help="Bundled name, HF folder or .gguf (default: bundled).")
_ARTIFACT = typer.Option(None, "--artifact", help="Compressed artifact folder.")
_DEMOS = typer.Option("knn", "--demos", help="none | random | knn")
_K = typer.Option(4, "--k", help="Demonstrations per prompt (at most).")
_BUDGET = typer.Option(512, "--budget", help="Prompt token budget.")
_SEED = typer.Option(0, "--seed")


def eval_cmd(
    task: str = _TASK,
    model: str = _MODEL,
    artifact: str = _ARTIFACT,
    demos: str = _DEMOS,
    k: int = _K,
    ordering: str = typer.Option(None, "--ordering",
                                 help="most_similar_last | most_similar_first | "
                                      "label_balanced | random (default: selection order)"),
    encoding: str = typer.Option(None, "--encoding", help="Sensor encoding override."),
    budget: int = _BUDGET,
    limit: int = typer.Option(None, "--limit", help="Evaluate only the first N test items."),
    seed: int = _SEED,
    adapter: str = typer.Option(None, "--adapter",
                                help="A LoRA adapter folder (e.g. edgeweave finetune "
                                     "--data task:NAME --out DIR), run unmerged."),
    template: str = typer.Option(None, "--template",
                                 help="A template.json from tasks tune-prompt (default: "
                                      "the task's own template)."),
    constrained: bool = typer.Option(False, "--constrained",
                                     help="Decode within the task's answer format (its "
                                          "labels, a number, a year or unknown)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    backend: str = backend_option(),
    variant: str = variant_option(),
) -> None:
    """Evaluate a model on one task and print its metrics (plus the non-LLM baseline)."""
    from edgeweave.runtime.policy import ProcessPolicy

    ProcessPolicy.for_this_process().apply()
    from edgeweave.bench.tasks import baseline_task, evaluate_task, get_task
    from edgeweave.bench.tasks.tuning import load_template

    get_task(task)  # an unknown name fails before the model loads
    tpl = load_template(template, task) if template else None
    lm, factory = _model(model, artifact, backend, variant, adapter)
    res = evaluate_task(task, lm, demos=demos, limit=limit, seed=seed, k=k,
                        ordering=ordering, encoding=encoding, budget_tokens=budget,
                        engine_factory=factory, constrained=constrained, template=tpl)
    base = baseline_task(task, seed=seed, limit=limit)
    if as_json:
        console.print_json(json.dumps({"result": res, "baseline": base}))
        return
    _print_eval(task, demos, constrained, res, base)


def _print_eval(task: str, demos: str, constrained: bool, res: dict, base: dict) -> None:
    """Every float metric of the result beside the non-LLM baseline's."""
    keys = [k_ for k_, v in res.items() if isinstance(v, float)]
    mode = " · constrained" if constrained else ""
    console.print(table(f"{task} · {res['model']} · demos={demos}{mode}", ["metric", "value",
                                                                      "baseline"],
                        [[k_, f"{res[k_]:.3f}", f"{base[k_]:.3f}" if k_ in base else ""]
                         for k_ in keys]))
    console.print(f"n={res['n']} items")


def tune_cmd(
    task: str = _TASK,
    model: str = _MODEL,
    artifact: str = _ARTIFACT,
    demos: str = _DEMOS,
    k: int = _K,
    n_val: int = typer.Option(16, "--val", help="Validation items (from the train split)."),
    n_induced: int = typer.Option(4, "--induced",
                                  help="Instructions the model proposes itself."),
    constrained: bool = typer.Option(False, "--constrained",
                                     help="Score with answers constrained to the task's "
                                          "answer format."),
    budget: int = _BUDGET,
    seed: int = _SEED,
    out: Path = typer.Option(Path("results/tasks"), "--out", "-o",
                             help="Writes OUT/TASK/template.json."),
    backend: str = backend_option(),
    variant: str = variant_option(),
) -> None:
    """Choose the task's prompt template on a validation split (never the test items)."""
    from edgeweave.runtime.policy import ProcessPolicy

    ProcessPolicy.for_this_process().apply()
    from edgeweave.bench.tasks import get_task
    from edgeweave.bench.tasks.tuning import save_tuning, tune_prompt, validation_split

    get_task(task)
    validation_split(task, seed, n_val)  # a bad --val fails before the model loads
    lm, factory = _model(model, artifact, backend, variant)
    res = tune_prompt(task, lm, demos=demos, k=k, n_val=n_val, n_induced=n_induced,
                      seed=seed, constrained=constrained, budget_tokens=budget,
                      engine_factory=factory)
    path = save_tuning(res, out)
    console.print(table(f"{task}: prompt candidates on {n_val} validation items",
                        ["origin", "score", "invalid", "instruction"],
                        [[s.candidate.origin, f"{s.score:.3f}", f"{s.invalid_rate:.2f}",
                          s.candidate.template.instruction[:70]] for s in res.scored]))
    console.print(f"chosen: {res.best.candidate.origin} ({res.best.score:.3f}) -> {path}\n"
                  f"use it: edgeweave tasks eval --task {task} --template {path}")


def _model(model: str | None, artifact: str | None, backend: str, variant: str,
           adapter: str | None = None):
    """The model as the engine choice asks (the reference torch weights for an artifact or
    fp32 on torch), and the session factory that evaluation drives; with ``adapter`` a stage
    engine of the choice that runs it unmerged in every session."""
    from edgeweave.cli.eval import load_any
    from edgeweave.runtime.local import EngineChoice

    choice = EngineChoice(backend, variant)
    if adapter is not None:
        from edgeweave.errors import ConfigError
        from edgeweave.runtime.adapters import AdapterSpec
        from edgeweave.runtime.local import LocalModel

        if artifact is not None:
            raise ConfigError("--adapter runs on --model (the adapter's base), not --artifact")
        lm = LocalModel.load(model or DEFAULT_MODEL, choice,
                             adapters=[AdapterSpec("task", Path(adapter))])
        return lm, lambda m: m.new_session(2048, adapter="task")
    reference = choice.backend == "torch" and (artifact is not None or variant == "fp32")
    lm = load_any(model or (None if artifact else DEFAULT_MODEL),
                  Path(artifact) if artifact else None, None if reference else choice)
    factory = (lambda m: m.new_session(2048)) if hasattr(lm, "new_session") else None
    return lm, factory
