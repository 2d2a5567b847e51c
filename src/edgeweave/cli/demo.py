"""``edgeweave demo``: the README's main job."""

from __future__ import annotations

import typer

from edgeweave.cli.common import console, metrics_line


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        model: str = typer.Option("smollm2-135m-instruct", "--model", "-m"),
        max_tokens: int = typer.Option(64, "--max-tokens", "-n"),
    ) -> None:
        """Run the pipeline on the bundled model, embedded (no cluster needed)."""
        from edgeweave.demo import DemoAnswer, answer_prompts
        from edgeweave.models import catalog

        if not catalog.is_cached(model) and model in catalog.BUNDLED:
            console.print(f"[bold]Converting {model} once to safetensors (about 30 s)...[/bold]")

        def show(a: DemoAnswer) -> None:
            console.print(f"\n[bold cyan]Q:[/bold cyan] {a.prompt}")
            console.print(f"[bold green]A:[/bold green] {a.result.text.strip()}")
            console.print(f"[dim]{metrics_line(a.result.metrics)}[/dim]")

        answer_prompts(model=model, max_tokens=max_tokens, on_answer=show)
