"""``edgeweave plan``: the optimal placement of a model on a fleet file, with baselines."""

from __future__ import annotations

import json

import typer

from edgeweave.cli.common import (
    console,
    hidden_states_option,
    keep_in_option,
    max_cost_option,
    table,
)


def run_plan(fleet: str, objective: str = "latency", model: str | None = None,
             baseline: str | None = None, min_quality: float = 0.0,
             battery_reserve: float = 0.2, prompt_len: int = 128, context: int = 512,
             batch: int = 1, keep_in: str | None = None, hidden_states: bool | None = None,
             max_cost: float | None = None) -> dict:
    """Plan (and optionally baselines) for a fleet file; host-calibrated when profiled."""
    from edgeweave.plan.baselines import BASELINES, baseline_tables
    from edgeweave.plan.fleet import load_fleet, with_policy
    from edgeweave.plan.partition import place_tables, tables_for
    from edgeweave.plan.tables import Constraints
    from edgeweave.profile import probe
    from edgeweave.profile.cost import UNCALIBRATED, check_shape
    from edgeweave.profile.model_costs import model_costs

    Constraints(min_quality, battery_reserve)  # refuse bad values before any file is read
    check_shape(prompt_len, context, batch)
    spec = load_fleet(fleet)
    the_fleet = with_policy(spec.fleet, keep_in, hidden_states, max_cost)
    hp = probe.load_cached()
    cal = hp.calibration() if hp else UNCALIBRATED
    t = tables_for(model_costs(model, prompt_len, context, batch), the_fleet,
                   variants=spec.variants, min_quality=min_quality,
                   battery_reserve=battery_reserve, calibration=cal)
    plans = {"planner": place_tables(t, objective)}
    names = list(BASELINES) if baseline == "all" else [baseline] if baseline else []
    for b in names:
        plans[b] = baseline_tables(t, b, objective)
    return {"fleet": the_fleet.name, "model": t.model.name, "calibration": cal.source,
            "plans": plans, "tables": t}


def register(app: typer.Typer) -> None:
    @app.command("plan")
    def plan_cmd(
        fleet: str = typer.Option(..., "--fleet", help="Fleet YAML (see examples/fleets)."),
        objective: str = typer.Option("latency", "--objective",
                                      help="latency | ttft | energy | throughput | cost"),
        baseline: str = typer.Option(None, "--baseline",
                                     help="Also show a baseline: memory | neurosurgeon | "
                                          "single | cloud | all"),
        model: str = typer.Option(None, "--model",
                                  help="Model: bundled, HF folder, .gguf, or a plan-only card "
                                       "(edgeweave models), e.g. llama-3.1-8b."),
        min_quality: float = typer.Option(0.0, "--min-quality",
                                          help="Minimum quality kept (0..1) per variant."),
        battery_reserve: float = typer.Option(0.2, "--battery-reserve"),
        prompt_len: int = typer.Option(128, "--prompt-len", help="Prompt tokens (prefill)."),
        context: int = typer.Option(512, "--context",
                                    help="Tokens of KV cache per sequence (memory)."),
        batch: int = typer.Option(1, "--batch", help="Sequences decoded together."),
        keep_in: str = keep_in_option(),
        hidden_states: bool = hidden_states_option(),
        max_cost: float = max_cost_option(),
        show_explain: bool = typer.Option(False, "--explain",
                                          help="Say what the policy excluded and each stage's "
                                               "memory."),
        as_json: bool = typer.Option(False, "--json", help="Print plans as JSON."),
    ) -> None:
        """Place the model's blocks on a fleet minimising an objective; print the breakdown."""
        r = run_plan(fleet, objective, model, baseline, min_quality, battery_reserve,
                     prompt_len, context, batch, keep_in, hidden_states, max_cost)
        if as_json:
            console.print_json(json.dumps({k: p.to_dict() for k, p in r["plans"].items()}))
            return
        best = r["plans"]["planner"]
        console.print(f"fleet {r['fleet']}, model {r['model']}, objective {objective} "
                      f"({r['calibration']})")
        console.print(table("Plan", ["stage", "device", "blocks", "variant", "codec out"],
                            [(k, s.device, str(s.shard), s.variant,
                              s.codec if k + 1 < len(best.stages) else "-")
                             for k, s in enumerate(best.stages)]))
        rows = []
        for name, p in r["plans"].items():
            q = p.predicted
            rows.append((name, len(p.stages), f"{q['per_token_s'] * 1e3:.3g}",
                         f"{q['ttft_s'] * 1e3:.3g}", f"{q['energy_per_token_j'] * 1e3:.3g}",
                         f"{q['throughput_tps']:.3g}", f"{q['compute_s'] * 1e3:.3g}",
                         f"{q['transfer_s'] * 1e3:.3g}", f"{q['max_memory_util']:.0%}",
                         f"{q['cost_per_mtok']:.3g}", f"{q['quality']:.3f}",
                         "yes" if q["feasible"] else "NO"))
        console.print(table("Predicted cost (ms, mJ per token; tok/s when pipelined; price "
                            "per million tokens)",
                            ["plan", "st", "ms/tok", "TTFT", "mJ/tok", "tok/s", "comp",
                             "xfer", "mem", "$/Mtok", "qual", "ok"], rows))
        if show_explain:
            from edgeweave.plan.explain import explain

            for line in explain(r["tables"], best):
                if line not in best.notes:
                    console.print(f"- {line}")
        for n in best.notes:
            console.print(f"- {n}")
