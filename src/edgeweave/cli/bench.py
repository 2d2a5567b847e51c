"""``edgeweave bench``: the GenAI-for-IoT benchmark and its report."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeweave.cli.common import backend_option, console
from edgeweave.models.catalog import DEFAULT_MODEL


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench_cmd(
        suite: str = typer.Option("quick", "--suite", "-s", help="quick (< 15 min) or full."),
        out: Path = typer.Option(Path("results/bench"), "--out", "-o",
                                 help="Folder for results.jsonl, report.html and summary.md."),
        model: str = typer.Option(DEFAULT_MODEL, "--model", "-m"),
        fresh: bool = typer.Option(False, "--fresh", help="Ignore earlier results in --out."),
        backend: str = backend_option(),
    ) -> None:
        """Tasks × compression variants × devices × plans; resumable; writes an HTML report."""
        from edgeweave.runtime.policy import ProcessPolicy

        ProcessPolicy.for_this_process().apply()
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from edgeweave.bench.runner import run_bench
        from edgeweave.bench.suite import get_suite

        s = get_suite(suite)
        if fresh and (out / "results.jsonl").exists():
            (out / "results.jsonl").unlink()
        with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                      console=console) as bar:
            task = bar.add_task("starting", total=None)

            def progress(step: str, done: int, total: int) -> None:
                bar.update(task, description=step, completed=done, total=total)

            html_path, md_path = run_bench(s, out, model, progress, backend)
        console.print(md_path.read_text())
        console.print(f"[bold]report:[/bold] {html_path}\n[bold]summary:[/bold] {md_path}")
