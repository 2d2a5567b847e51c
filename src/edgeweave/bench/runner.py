"""``edgeweave bench``: tasks × compression variants × devices × plans, to JSON lines and a report.

Measured on this host: per-variant perplexity, decode speed, TTFT, peak RSS and task quality
(each variant in its own process), and one fleet's plan launched as embedded stages.
Predicted by the cost model (and labelled so): every catalog device × variant, and the plans
of edgeweave and the baselines on the sample fleets. Rows land in ``results.jsonl`` as they are
produced; a rerun skips what is already there.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgeweave.bench.measure import measure_variant
from edgeweave.bench.report import write_report
from edgeweave.bench.store import ResultStore
from edgeweave.bench.suite import Suite, fleet_path
from edgeweave.errors import EdgeweaveError
from edgeweave.models import DEFAULT_MODEL

Progress = Callable[[str, int, int], None]  # (step, done, total)


def _noop(step: str, done: int, total: int) -> None:
    pass


def run_variants(store: ResultStore, suite: Suite, model: str, tasks: list[str],
                 host_power_w: float, progress: Progress, backend: str = "") -> None:
    ctx = mp.get_context("spawn")  # a fresh interpreter per variant: honest peak RSS
    for i, v in enumerate(suite.variants):
        progress(f"measure {v}", i, len(suite.variants))
        wanted = [f"variant/{v}"] + [f"task/{v}/{t}/{d}" for t in tasks for d in suite.demos]
        if all(k in store for k in wanted):
            continue
        with ctx.Pool(1) as pool:
            pool.apply(measure_variant, (str(store.path), model, v, asdict(suite), tasks,
                                         host_power_w, backend))
        store.__init__(store.path)  # re-read what the child appended
    progress("measure", len(suite.variants), len(suite.variants))


def run_baselines(store: ResultStore, suite: Suite, tasks: list[str]) -> None:
    from edgeweave.bench.tasks import baseline_task

    for t in tasks:
        key = f"task_baseline/{t}"
        if key not in store:
            r = baseline_task(t, seed=suite.seed, limit=suite.task_limit)
            store.add({"key": key, "kind": "task_baseline", "task": t, "value": r["score"],
                       "metric": r["metric"], "n": r["n"]})


def variant_profiles(store: ResultStore, suite: Suite) -> dict[str, Any]:
    """Planner variants: defaults, overridden by the artifacts this run built."""
    from edgeweave.profile.variants import DEFAULT_VARIANTS, variant_from_manifest

    out = {}
    for v in suite.variants:
        row = store.get(f"variant/{v}") or {}
        if row.get("artifact"):
            try:
                out[v] = variant_from_manifest(row["artifact"])
                continue
            except EdgeweaveError:
                pass
        from edgeweave.variants import registry

        base = DEFAULT_VARIANTS.get(v) or registry().get(v)
        if base is not None:
            out[v] = base
    return out


def run_devices(store: ResultStore, suite: Suite, model: str, variants: dict[str, Any],
                calibration: Any) -> None:
    from edgeweave.profile import catalog, cost
    from edgeweave.profile.model_costs import model_costs

    m = model_costs(model)
    for name, dev in catalog.devices().items():
        for vname, var in variants.items():
            key = f"device/{name}/{vname}"
            if key in store:
                continue
            mem = cost.model_memory(m, var)
            fits = mem <= dev.memory and (not dev.compute or var.precision in dev.compute
                                          or "fp32" in dev.compute)
            tpot = cost.decode_token_s(m, dev, var, calibration)
            store.add({"key": key, "kind": "device", "device": name, "tier": dev.tier,
                       "variant": vname, "fits": bool(fits), "memory_mb": mem / 1e6,
                       "tpot_s": tpot, "ttft_s": cost.ttft_s(m, dev, var, calibration),
                       "energy_j_per_token": cost.energy_j(tpot, dev), "predicted": True})


def _plan_row(fleet: str, planner: str, plan: Any) -> dict[str, Any]:
    p = plan.predicted
    return {"key": f"plan/{fleet}/{planner}", "kind": "plan", "fleet": fleet, "planner": planner,
            "n_layers": plan.n_layers, "predicted": True,
            "stages": [{"device": s.device, "start": s.shard.start, "end": s.shard.end,
                        "variant": s.variant, "codec": s.codec} for s in plan.stages],
            "tpot_s": p.get("per_token_s"), "ttft_s": p.get("ttft_s"),
            "energy_j_per_token": p.get("energy_per_token_j"),
            "link_bytes_per_token": p.get("wire_bytes_per_token"),
            "feasible": bool(p.get("feasible", 1.0)), "notes": list(plan.notes)}


def run_plans(store: ResultStore, suite: Suite, model: str, variants: dict[str, Any],
              calibration: Any) -> None:
    from edgeweave.plan import place
    from edgeweave.plan.baselines import place_baseline
    from edgeweave.plan.fleet import load_fleet
    from edgeweave.profile.model_costs import model_costs

    m = model_costs(model)
    for fleet in suite.fleets:
        spec = load_fleet(fleet_path(fleet))
        fvars = {**variants, **spec.variants}
        for planner in suite.planners:
            key = f"plan/{fleet}/{planner}"
            if key in store:
                continue
            try:
                if planner == "edgeweave":
                    plan = place(m, spec.fleet, "latency", variants=fvars, calibration=calibration)
                else:
                    plan = place_baseline(m, spec.fleet, planner, "latency", variants=fvars,
                                          calibration=calibration)
                row = _plan_row(fleet, planner, plan)
                if not row["feasible"]:
                    row["error"] = "does not fit the devices' memory (the baseline ignores it)"
            except EdgeweaveError as e:
                row = {"key": key, "kind": "plan", "fleet": fleet, "planner": planner,
                       "error": str(e), "predicted": True}
            store.add(row)


def run_fleet_plan(store: ResultStore, suite: Suite, model: str,
                   layouts: tuple[str, ...] = ("edgeweave", "memory"),
                   codecs: tuple[str, ...] = ("fp16", "int8"), backend: str = "") -> None:
    """Launch plan layouts of ``suite.run_fleet`` as embedded stages on this host.

    Weights stay fp32 here so the run isolates what splitting costs (per-hop work, the
    hidden-state codec, bytes between stages) and checks greedy tokens against one process.
    """
    if not suite.run_fleet:
        return
    from edgeweave.runtime.generate import SamplingParams, generate
    from edgeweave.runtime.launch import embedded
    from edgeweave.runtime.local import EngineChoice, LocalModel
    from edgeweave.types import Plan, Shard, Stage

    todo = [(p, c) for p in layouts for c in codecs
            if f"run/{suite.run_fleet}/{p}/{c}" not in store
            and (store.get(f"plan/{suite.run_fleet}/{p}") or {}).get("stages")]
    if not todo:
        return
    choice = EngineChoice(backend, "fp32")  # the same engine whole and split
    lm = LocalModel.load(model, choice)
    prompt = "Describe what a smart home gateway does with sensor readings."
    params = SamplingParams(max_tokens=suite.decode_tokens, ignore_eos=True)
    want = generate(lm.new_session(512), lm.tokenizer, prompt, params, chat=True)
    for planner, codec in todo:
        row = store.get(f"plan/{suite.run_fleet}/{planner}")
        n = row["n_layers"]
        last = len(row["stages"]) - 1
        stages = tuple(Stage(s["device"], Shard(s["start"], s["end"], n), "fp32",
                             codec if k < last else "fp32") for k, s in enumerate(row["stages"]))
        with embedded(model, Plan(stages=stages), backend=choice.backend) as dep:
            got = generate(dep.coordinator.new_session(512), lm.tokenizer, prompt, params,
                           chat=True)
        extra = got.metrics.extra
        hidden = extra.get("hidden_bytes", 0.0)
        store.add({"key": f"run/{suite.run_fleet}/{planner}/{codec}", "kind": "run",
                   "fleet": f"{suite.run_fleet} ({planner} layout, fp32 weights)", "codec": codec,
                   "n_layers": n, "stages": [dict(s, variant="fp32", codec=codec)
                                             for s in row["stages"]],
                   "decode_tps": got.metrics.decode_tps, "ttft_s": got.metrics.ttft_s,
                   "single_process_decode_tps": want.metrics.decode_tps,
                   "wire_bytes_per_token": hidden / max(got.metrics.prompt_tokens
                                                        + got.metrics.generated_tokens, 1),
                   "identical": got.token_ids == want.token_ids, "stats": extra})


def run_bench(suite: Suite, out_dir: str | Path = "results/bench", model: str = DEFAULT_MODEL,
              progress: Progress = _noop, backend: str = "") -> tuple[Path, Path]:
    """Run (or resume) ``suite``; returns the paths of the HTML report and Markdown summary."""
    from edgeweave.bench.tasks import task_names
    from edgeweave.profile.probe import probe

    out = Path(out_dir)
    store = ResultStore(out / "results.jsonl")
    tasks = list(suite.tasks or task_names())
    t0 = time.perf_counter()
    progress("probe host", 0, 1)
    host = probe(with_model=False)
    cal = host.calibration()
    run_variants(store, suite, model, tasks, host.device().power_active_w, progress, backend)
    progress("baselines, devices, plans", 0, 1)
    run_baselines(store, suite, tasks)
    variants = variant_profiles(store, suite)
    run_devices(store, suite, model, variants, cal)
    run_plans(store, suite, model, variants, cal)
    progress("launch the fleet plan", 0, 1)
    run_fleet_plan(store, suite, model, backend=backend)
    meta = {"title": "edgeweave: generative AI on IoT, benchmark report", "suite": suite.name,
            "model": model, "host": f"this host ({host.cpus} CPUs)",
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "elapsed_s": time.perf_counter() - t0}
    return write_report(list(store.rows()), out, meta)
