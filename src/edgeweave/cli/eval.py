"""``edgeweave eval``: perplexity / IoT questions of a model or artifact, or an IoT task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from edgeweave.cli.common import backend_option, console, variant_option


def load_any(model: str | None, artifact: Path | None, choice: Any = None) -> Any:
    """A torch ``LoadedModel`` (``choice`` None or torch backend) or an engine-backed
    ``LocalModel`` of ``choice`` (ONNX Runtime by default: what the other verbs run)."""
    from edgeweave.errors import ConfigError

    if (model is None) == (artifact is None):
        raise ConfigError("give exactly one of --model NAME_OR_PATH or --artifact DIR")
    if choice is not None:
        from edgeweave.runtime.local import LocalModel

        return LocalModel.load(str(artifact) if artifact is not None else model, choice)
    if artifact is not None:
        from edgeweave.compress import load_artifact

        return load_artifact(artifact)
    from edgeweave.models import load

    return load(model)


def run_eval(model: str | None = None, artifact: Path | None = None, task: str | None = None,
             demos: str = "none", limit: int | None = None, tokens: int = 4096,
             seed: int = 0, questions: bool = True, choice: Any = None) -> dict[str, Any]:
    """Plain function behind the verb; ``choice`` (an ``EngineChoice``) None evaluates the
    torch weights as they are (the reference numbers an artifact's manifest records)."""
    from edgeweave.errors import EdgeweaveError

    lm = load_any(model, artifact, choice)
    if task is not None:
        try:
            from edgeweave.bench.tasks import evaluate_task
        except ImportError as e:
            raise EdgeweaveError(f"--task needs the IoT task suite (edgeweave.bench.tasks), "
                                 f"which is not available here ({e}); evaluate without --task "
                                 "for perplexity and the IoT question set") from e
        factory = (lambda m: m.new_session(2048)) if hasattr(lm, "new_session") else None
        return evaluate_task(task, lm, demos=demos, limit=limit, seed=seed,
                             engine_factory=factory)
    from edgeweave.compress.evaluate import evaluate

    result = evaluate(lm, tokens=tokens, seed=seed, questions=questions)
    if hasattr(lm, "info"):
        result["runtime"] = lm.info()
    else:
        result["runtime"] = {"backend": "torch", "variant": "artifact" if artifact else "fp32"}
    if artifact is not None and not hasattr(lm, "new_session"):  # torch: the reference
        from edgeweave.compress.artifact import MANIFEST
        from edgeweave.paths import atomic_write_json

        manifest = json.loads((artifact / MANIFEST).read_text())
        manifest.setdefault("metrics", {}).update(
            {k: v for k, v in result.items() if k.startswith("ppl_")} |
            {"iot_accuracy": result.get("iot", {}).get("accuracy")})
        atomic_write_json(artifact / MANIFEST, manifest)
    return result


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_cmd(
        model: str = typer.Option(None, "--model", "-m", help="Bundled name, HF folder, .gguf."),
        artifact: Path = typer.Option(None, "--artifact", "-a", help="Compressed artifact."),
        task: str = typer.Option(None, "--task", help="IoT task from the bench suite."),
        demos: str = typer.Option("none", "--demos", help="knn | random | none (with --task)."),
        limit: int = typer.Option(None, "--limit", help="Examples per task (with --task)."),
        tokens: int = typer.Option(4096, "--tokens", help="Perplexity token budget per corpus."),
        seed: int = typer.Option(0, "--seed"),
        no_questions: bool = typer.Option(False, "--no-questions",
                                          help="Perplexity only, skip the IoT questions."),
        as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
        backend: str = backend_option(),
        variant: str = variant_option(),
    ) -> None:
        """Held-out perplexity (Wikipedia, Shakespeare), IoT questions, or one IoT task."""
        from edgeweave.runtime.policy import ProcessPolicy

        ProcessPolicy.for_this_process().apply()
        from edgeweave.runtime.local import EngineChoice

        choice = EngineChoice(backend, variant)
        if demos not in ("knn", "random", "none"):
            from edgeweave.errors import ConfigError

            raise ConfigError(f"--demos {demos!r}: choose knn, random or none")
        # torch on the model's own weights (fp32, or an artifact as it is) is the reference
        # path: batched perplexity, and an artifact's manifest records the figures
        reference = choice.backend == "torch" and (artifact is not None or variant == "fp32")
        r = run_eval(model, artifact, task, demos, limit, tokens, seed, not no_questions,
                     None if reference else choice)
        if as_json or task is not None:
            console.print_json(json.dumps(r, default=str))
            return
        rt = r.get("runtime", {})
        line = f"{rt.get('backend', '?')} {rt.get('variant', '?')} · " + " · ".join(
            f"{k} {v:.2f}" for k, v in r.items() if k.startswith("ppl_"))
        if "iot" in r:
            line += f" · IoT questions {100 * r['iot']['accuracy']:.0f}%"
            line += f" · sanity: {r['sanity']['text'].strip()[:60]!r}"
        console.print(line)
