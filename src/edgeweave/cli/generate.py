"""``edgeweave generate``: one completion from a model, with its metrics."""

from __future__ import annotations

import typer

from edgeweave.cli.common import (
    backend_option,
    console,
    draft_k_option,
    draft_option,
    metrics_line,
    threads_option,
    variant_option,
)
from edgeweave.models.catalog import DEFAULT_MODEL


def register(app: typer.Typer) -> None:
    @app.command("generate")
    def generate_cmd(
        prompt: str = typer.Argument(..., help="Text to continue (or the user message with --chat)."),
        model: str = typer.Option(DEFAULT_MODEL, "--model", "-m",
                                  help="Bundled name, HF folder or .gguf file."),
        chat: bool = typer.Option(False, "--chat", help="Wrap the prompt in the chat template."),
        stream: bool = typer.Option(False, "--stream", help="Print tokens as they come."),
        max_tokens: int = typer.Option(128, "--max-tokens", "-n"),
        temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy."),
        top_k: int = typer.Option(0, "--top-k"),
        top_p: float = typer.Option(1.0, "--top-p"),
        repetition_penalty: float = typer.Option(1.0, "--repetition-penalty"),
        stop: list[str] = typer.Option([], "--stop", help="Stop string (repeatable)."),
        seed: int = typer.Option(None, "--seed"),
        backend: str = backend_option(),
        variant: str = variant_option(),
        threads: int = threads_option(),
        json_object: bool = typer.Option(False, "--json", help="Answer with a JSON object."),
        schema: str = typer.Option(None, "--schema", help="Answer valid for this JSON schema "
                                   "(a .json file or inline JSON)."),
        choice: list[str] = typer.Option([], "--choice", help="Answer with one of these "  # noqa: B008
                                         "labels (repeatable)."),
        regex: str = typer.Option(None, "--regex", help="Answer matching this pattern."),
        adapter: str = typer.Option(None, "--adapter", help="LoRA adapter folder (edgeweave "
                                    "finetune --out) run unmerged on the model."),
        draft: str = draft_option(), draft_k: int = draft_k_option(),
    ) -> None:
        """Generate text with our own decode loop and print its metrics."""
        from edgeweave.runtime.policy import ProcessPolicy

        ProcessPolicy.for_this_process(threads=threads).apply()  # before numpy/onnxruntime
        from edgeweave.runtime.api import run_generate
        from edgeweave.runtime.constraints import parse_format
        from edgeweave.runtime.drafts import Speculation
        from edgeweave.runtime.local import EngineChoice

        output = parse_format(json_object=json_object, schema=schema, choices=tuple(choice),
                              regex=regex)
        speculation = Speculation.from_options(draft, draft_k)

        run_generate(prompt, model=model, chat=chat, stream=stream, max_tokens=max_tokens,
                     temperature=temperature, top_k=top_k, top_p=top_p,
                     repetition_penalty=repetition_penalty, stop=tuple(stop), seed=seed,
                     choice=EngineChoice(backend, variant, threads), output=output,
                     adapter=adapter, speculation=speculation,
                     echo=lambda s: console.print(s, end="", markup=False, highlight=False),
                     report=lambda r: console.print(
                         f"\n[dim]{r.runtime['backend']} {r.runtime['variant']} · "
                         f"{metrics_line(r.metrics)}[/dim]"))
