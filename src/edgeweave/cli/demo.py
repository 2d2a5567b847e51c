"""``edgeweave demo``: the README's main job."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeweave.cli.common import backend_option, console, table
from edgeweave.models.catalog import DEFAULT_MODEL


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        model: str = typer.Option(DEFAULT_MODEL, "--model", "-m"),
        fleet: str = typer.Option("home", "--fleet", help="Fleet YAML or an example name."),
        per_task: int = typer.Option(1, "--per-task", help="Sensor questions per task."),
        out: Path = typer.Option(Path("results/demo"), "--out", "-o"),
        backend: str = backend_option(),
        free: bool = typer.Option(False, "--free-answers",
                                  help="Let the model answer free text instead of decoding "
                                       "within each task's answer format."),
        adapter_steps: int = typer.Option(
            60, "--adapter-steps", min=0,
            help="Ask the questions again through a LoRA adapter trained this many steps on "
                 "the tasks' train splits (trained once, then cached); 0: base model only."),
    ) -> None:
        """The whole pipeline, embedded: compress, plan, launch, serve, answer, report."""
        from edgeweave.runtime.policy import ProcessPolicy

        ProcessPolicy.for_this_process().apply()  # before numpy, torch or onnxruntime load
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from edgeweave.demo import DemoConfig, run_demo
        from edgeweave.models import catalog

        if model in catalog.BUNDLED and not catalog.is_cached(model):
            console.print(f"Converting {model} once to safetensors (about 30 s)...")
        cfg = DemoConfig(model=model, fleet=fleet, per_task=per_task, out=out, backend=backend,
                         constrained=not free, adapter_steps=adapter_steps)
        with Progress(TextColumn("{task.description:<48}"), BarColumn(), TextColumn(
                "{task.completed}/{task.total}"), TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task("starting", total=1)

            def step(desc: str, done: int, total: int) -> None:
                bar.update(task, description=desc, completed=done, total=max(total, 1))

            res = run_demo(cfg, step)
        plan_rows = [r for r in res.rows if r["kind"] == "plan"]
        console.print(table(f"Plans for the {fleet} fleet (predicted per-token latency)",
                            ["planner", "stages", "TPOT ms", "energy J/token"],
                            [[r["planner"], _stages(r), _ms(r.get("tpot_s")),
                              _num(r.get("energy_j_per_token"))] for r in plan_rows]))
        how = "free text" if free else "constrained to each task's answer format"
        console.print(table(f"Answers through the OpenAI-compatible API (real sensor windows, "
                            f"{how})",
                            ["task", "gold", "answer", "score", "prompt tok", "latency s",
                             "decode tok/s"],
                            [[a["task"], a["gold"], a["answer"][:40], _num(a.get("score")),
                              a.get("prompt_tokens"), _num(a["latency_s"]),
                              _num(a.get("decode_tps"))] for a in res.answers]))
        if res.adapted:
            after = {(a["task"], a["id"]): a for a in res.adapted}
            pairs = [(a, after[a["task"], a["id"]]) for a in res.answers]
            rows = [[a["task"], a["gold"], a["answer"][:30], _num(a.get("score")),
                     b["answer"][:30], _num(b.get("score"))] for a, b in pairs]
            rows.append(["all", "", "", _num(_total(res.answers)), "",
                         _num(_total(res.adapted))])
            name = res.adapted[0]["model"]
            console.print(table(f"The same questions, base model vs the task adapter {name} "
                                "(LoRA, unmerged on the same stages)",
                                ["task", "gold", "base", "score", name, "score"], rows))
        console.print(f"[bold]report:[/bold] {res.report}\n[bold]summary:[/bold] {res.summary}")


def _stages(r: dict) -> str:
    if r.get("error"):
        return "infeasible"
    return " → ".join(f"{s['device']}[{s['start']},{s['end']}) {s['variant']}" for s in r["stages"])


def _total(answers: list[dict]) -> float:
    return sum(a.get("score") or 0.0 for a in answers)


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v * 1000:.1f}"


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.3g}"
