"""``edgeweave demo``: the whole pipeline on the embedded default (no cluster, no network).

bundled model → two compressed variants (cached after the first run) → a plan for a sample
home fleet (sensor hub, gateway, edge server), next to the baselines → the plan's stages
launched in this process behind the OpenAI-compatible HTTP API on 127.0.0.1 → IoT questions
built from real sensor windows, answered through that API with the official ``openai``
client → the same questions again through a LoRA adapter trained on those tasks' train
splits (trained once, cached; served unmerged beside the base) → a results table and an HTML
report.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeweave.models import DEFAULT_MODEL
from edgeweave.types import Plan

if TYPE_CHECKING:
    from edgeweave.finetune.cached import AdapterRecipe
    from edgeweave.profile.cost import Calibration
    from edgeweave.runtime.constraints import OutputFormat
    from edgeweave.runtime.coordinator import Coordinator
    from edgeweave.variants import Variant

DEMO_TASKS = ("activity", "occupancy", "appliance", "anomaly", "wikiqa")
ADAPTER_NAME = "iot-tasks"  # the adapter's model id on the demo's server

Step = Callable[[str, int, int], None]  # (description, done, total) for progress bars


@dataclass(frozen=True)
class DemoConfig:
    model: str = DEFAULT_MODEL
    variants: tuple[str, ...] = ("int8", "int4")
    backend: str = ""  # stage engines: "" = the default (ONNX Runtime), "onnx" or "torch"
    fleet: str = "home"
    tasks: tuple[str, ...] = DEMO_TASKS
    per_task: int = 1
    out: Path = Path("results/demo")
    baselines: tuple[str, ...] = ("memory", "neurosurgeon", "single", "cloud")
    # halfway through, this device drops out: plan.adapt re-plans, the stages move live.
    # "auto": the device holding most blocks of the plan (never the fleet's entry or exit)
    drop_device: str | None = "auto"
    # answers decode within each task's answer format (labels, a number, a year or unknown)
    constrained: bool = True
    # the questions are asked again through a LoRA adapter trained this many steps on the
    # tasks' train splits, prompted with kNN demonstrations as the questions are (0: no
    # adapter); trained on the first run, then cached in $EDGEWEAVE_HOME
    adapter_steps: int = 60


@dataclass
class DemoResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)  # the base model's
    adapted: list[dict[str, Any]] = field(default_factory=list)  # the same, with the adapter
    report: Path | None = None
    summary: Path | None = None
    url: str = ""


def _noop(desc: str, done: int, total: int) -> None:
    pass


def build_variants(cfg: DemoConfig, step: Step) -> list[dict[str, Any]]:
    """Make (or reuse) the compressed artifacts and describe them as report rows."""
    from edgeweave.compress.manifest import read_manifest
    from edgeweave.compress.variants import variant
    from edgeweave.models.catalog import resolve

    folder = resolve(cfg.model)[1]
    fp32 = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    rows = [{"key": "variant/fp32", "kind": "variant", "variant": "fp32", "size_mb": fp32 / 1e6,
             "bits_per_weight": 32.0}]
    for i, name in enumerate(cfg.variants):
        step(f"compress {name} (cached after the first run)", i, len(cfg.variants))
        path = variant(name, cfg.model)
        m = read_manifest(path)
        size = m.get("stats", {})
        metrics = m.get("metrics", {})
        rows.append({"key": f"variant/{name}", "kind": "variant", "variant": name,
                     "size_mb": (size.get("size_bytes") or 0) / 1e6,
                     "bits_per_weight": size.get("bits_per_weight"),
                     "ppl_wiki": metrics.get("ppl_wikipedia") or metrics.get("perplexity"),
                     "artifact": str(path)})
    step("compress", len(cfg.variants), len(cfg.variants))
    return rows


def adapter_recipe(cfg: DemoConfig) -> AdapterRecipe:
    """The demo adapter: rank 8 on q/v, trained on up to 48 train items per task."""
    from edgeweave.finetune.cached import AdapterRecipe
    from edgeweave.finetune.config import LoRAConfig, TrainConfig
    from edgeweave.finetune.task_data import TaskData

    return AdapterRecipe(TaskData(tuple(cfg.tasks), "knn"), LoRAConfig(rank=8, alpha=16),
                         TrainConfig(steps=cfg.adapter_steps, lr=2e-3, batch_size=4,
                                     micro_batch_size=4, seq_len=544), limit=48)


def build_adapter(cfg: DemoConfig, step: Step) -> Path | None:
    """Train (or reuse) the demo's task adapter; None when the config asks for none."""
    from edgeweave.finetune.cached import adapter_path, cached_adapter

    if cfg.adapter_steps <= 0:
        return None
    recipe = adapter_recipe(cfg)
    fresh = not adapter_path(recipe, cfg.model).exists()
    step(f"train the task adapter ({cfg.adapter_steps} steps"
         f"{', once' if fresh else ', cached'})", 0, 1)
    return cached_adapter(recipe, cfg.model)


def plan_fleet(cfg: DemoConfig, variant_rows: list[dict[str, Any]]) -> tuple[Plan, list[dict]]:
    """Our plan for the fleet plus the baselines' plans, as (Plan, report rows)."""
    from edgeweave.bench.runner import _plan_row
    from edgeweave.bench.suite import fleet_path
    from edgeweave.errors import EdgeweaveError
    from edgeweave.plan import place
    from edgeweave.plan.baselines import place_baseline
    from edgeweave.plan.fleet import load_fleet
    from edgeweave.profile.model_costs import model_costs
    variants = _planner_variants(cfg, {r["variant"] for r in variant_rows})
    spec = load_fleet(fleet_path(cfg.fleet))
    kw: dict[str, Any] = {"variants": variants, **_calibration()}
    m = model_costs(cfg.model)
    ours = place(m, spec.fleet, "latency", **kw)
    rows = [_plan_row(cfg.fleet, "edgeweave", ours)]
    for b in cfg.baselines:
        try:
            p = place_baseline(m, spec.fleet, b, "latency", **kw)
            row = _plan_row(cfg.fleet, b, p)
            if not row["feasible"]:
                row["error"] = "does not fit the devices' memory (the baseline ignores it)"
        except EdgeweaveError as e:
            row = {"key": f"plan/{cfg.fleet}/{b}", "kind": "plan", "fleet": cfg.fleet,
                   "planner": b, "error": str(e)}
        rows.append(row)
    return ours, rows


def sensor_questions(cfg: DemoConfig, count_tokens: Callable[[str], int] | None = None
                     ) -> list[dict[str, Any]]:
    """Real test windows of each task, turned into prompts with kNN demonstrations.

    ``count_tokens`` should be the served model's tokenizer: the task adapter was trained on
    prompts whose demonstrations fill the budget by that count (``finetune.task_data``), and
    the 3-characters-per-token estimate fits a different number of them.
    """
    from edgeweave.bench.tasks import example_prompts
    from edgeweave.bench.tasks.prompts import approx_tokens

    out = []
    for t in cfg.tasks:
        out += example_prompts(t, n=cfg.per_task, demos="knn",
                               count_tokens=count_tokens or approx_tokens)
    return out


def guided(fmt: OutputFormat | None) -> dict[str, Any]:
    """A task's answer format as the server's request fields (vLLM's guided_* names)."""
    if fmt is None:
        return {}
    if fmt.kind == "choice":
        return {"guided_choice": list(fmt.choices)}
    return {"guided_regex": fmt.pattern}


def ask(url: str, key: str, model_id: str, questions: list[dict[str, Any]], step: Step,
        plan_label: str = "", constrained: bool = True, adapter: str | None = None
        ) -> list[dict[str, Any]]:
    """Send each question through the OpenAI-compatible API with the official client;
    ``constrained`` asks for the task's answer format, so every answer is a valid one;
    ``adapter`` names the served adapter to answer with (its model id) instead of the base."""
    from openai import OpenAI

    from edgeweave.bench.tasks import get_task, load_split

    client = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=300)
    answers = []
    for i, q in enumerate(questions):
        step(f"ask{' ' + adapter if adapter else ''}: {q['task']}", i, len(questions))
        task = get_task(q["task"])
        t0 = time.perf_counter()
        extra_body = guided(task.answer_format()) if constrained else {}
        r = client.completions.create(model=adapter or model_id, prompt=q["prompt"],
                                      temperature=0,
                                      max_tokens=max(task.max_answer_tokens, 16)
                                      if extra_body else task.max_answer_tokens,
                                      stop=["\n"], extra_body=extra_body or None)
        text = r.choices[0].text
        extra = (r.model_extra or {}).get("edgeweave", {})
        pred = task.parse(text)
        item = next(i for i in load_split(q["task"]).test if i.id == q["id"])
        answers.append({
            "task": q["task"], "id": q["id"], "gold": q["answer"], "answer": text.strip(),
            "parsed": pred, "metric": task.metric,
            "score": task.score([item], [pred]).get(task.metric),
            "prompt_tokens": r.usage.prompt_tokens if r.usage else None,
            "completion_tokens": r.usage.completion_tokens if r.usage else None,
            "latency_s": time.perf_counter() - t0, "ttft_s": extra.get("ttft_s"),
            # one token is all prefill: no decode step to time (the server says 0)
            "decode_tps": extra.get("decode_tok_s")
            if r.usage and r.usage.completion_tokens > 1 else None, "plan": plan_label,
            "constrained": bool(extra_body), "question": q["prompt"][-240:],
            "model": adapter or "base",
        })
    step("ask", len(questions), len(questions))
    return answers


def run_demo(cfg: DemoConfig = DemoConfig(), step: Step = _noop,
             on_answer: Callable[[dict[str, Any]], None] | None = None) -> DemoResult:
    from edgeweave.bench.report import write_report
    from edgeweave.runtime.adapters import AdapterSpec
    from edgeweave.runtime.launch import embedded
    from edgeweave.runtime.local import EngineChoice
    from edgeweave.serve.backend import CoordinatorSessions
    from edgeweave.serve.config import ServeConfig
    from edgeweave.serve.server import BackgroundServer

    res = DemoResult()
    t0 = time.perf_counter()
    choice = EngineChoice(cfg.backend)
    variant_rows = build_variants(cfg, step)
    adapter = build_adapter(cfg, step)
    step("plan the fleet", 0, 1)
    plan, plan_rows = plan_fleet(cfg, variant_rows)
    step(f"launch the plan's stages ({choice.backend})", 0, 1)
    dep = embedded(cfg.model, plan, backend=choice.backend)
    coord = dep.coordinator
    key = "ew-" + secrets.token_hex(8)
    backend = CoordinatorSessions(coord, dep.tokenizer, model_id=cfg.model)
    if adapter is not None:  # unmerged: the base's stages serve it beside the base
        backend.add_adapters([AdapterSpec(ADAPTER_NAME, adapter)])
    server = BackgroundServer(backend, ServeConfig(api_keys=(key,), model_id=cfg.model,
                                                   max_prompt_tokens=1536))
    questions = sensor_questions(cfg, lambda text: len(dep.tokenizer.encode(text)))
    try:
        res.url = server.start()
        half = len(questions) // 2 if cfg.drop_device else len(questions)
        res.answers = ask(res.url, key, cfg.model, questions[:half], step, _label(plan),
                          cfg.constrained)
        gone = _device_to_drop(cfg, plan)
        if gone and half < len(questions):
            step(f"{gone} goes away: re-plan and move stages", 0, 1)
            adapt_row, plan = adapt_to_loss(cfg, plan, coord, gone)
            res.rows.append(adapt_row)
            res.answers += ask(res.url, key, cfg.model, questions[half:], step, _label(plan),
                               cfg.constrained)
        if adapter is not None:  # the same questions, on the plan that now runs
            res.adapted = ask(res.url, key, cfg.model, questions, step, _label(plan),
                              cfg.constrained, ADAPTER_NAME)
        for a in res.answers + res.adapted:
            if on_answer:
                on_answer(a)
        stats = dict(coord.stats)
    finally:
        server.stop()
        dep.close()
    asked = res.answers + res.adapted
    tokens = sum((a["prompt_tokens"] or 0) + (a["completion_tokens"] or 0) for a in asked)
    tps = [a["decode_tps"] for a in asked if a.get("decode_tps")]
    run_row = {"key": f"run/{cfg.fleet}/demo", "kind": "run", "fleet": cfg.fleet,
               "codec": "/".join(s.codec for s in plan.stages[:-1]) or "–",
               "n_layers": plan.n_layers, "stages": plan_rows[0]["stages"],
               "decode_tps": sum(tps) / len(tps) if tps else None,
               "ttft_s": _mean([a.get("ttft_s") for a in asked]),
               "wire_bytes_per_token": None, "identical": None, "stats": stats,
               "answered": len(asked), "tokens": tokens, "backend": choice.backend}
    res.rows = variant_rows + plan_rows + [run_row] + res.rows + [
        {"key": f"answer/{a['model']}/{a['task']}/{a['id']}", "kind": "answer", **a}
        for a in asked]
    step("write the report", 0, 1)
    meta = {"title": "edgeweave demo: IoT answers from a planned home fleet", "suite": "demo",
            "model": cfg.model, "host": f"this host, embedded stages on {choice.backend}",
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "elapsed_s": time.perf_counter() - t0}
    res.report, res.summary = write_report(res.rows, cfg.out, meta)
    step("done", 1, 1)
    return res


def _device_to_drop(cfg: DemoConfig, plan: Plan) -> str | None:
    if cfg.drop_device != "auto":
        return cfg.drop_device
    from edgeweave.bench.suite import fleet_path
    from edgeweave.plan.fleet import load_fleet

    fleet = load_fleet(fleet_path(cfg.fleet)).fleet
    movable = [s for s in plan.stages if s.device not in (fleet.entry, fleet.exit)]
    return max(movable, key=lambda s: s.shard.size).device if movable else None


def adapt_to_loss(cfg: DemoConfig, plan: Plan, coord: Coordinator, gone: str
                  ) -> tuple[dict[str, Any], Plan]:
    """A device vanishes: the adapter picks the new optimum, the coordinator switches to it
    between requests (sessions would be replayed into the moved stages)."""
    from edgeweave.bench.suite import fleet_path
    from edgeweave.plan.adapt import Adapter, DeviceGone
    from edgeweave.plan.fleet import load_fleet
    from edgeweave.profile.model_costs import model_costs

    spec = load_fleet(fleet_path(cfg.fleet))
    variants = {s.variant for s in plan.stages}
    adapter = Adapter(spec.fleet, model_costs(cfg.model), "latency", plan=plan,
                      variants=_planner_variants(cfg, variants), **_calibration())
    decision = adapter.on_event(DeviceGone(gone))
    switch_s = coord.apply_plan(decision.plan) if decision.changed else 0.0
    p = decision.plan
    row = {"key": f"adapt/{cfg.fleet}/{gone}", "kind": "adapt", "fleet": cfg.fleet,
           "device": gone, "event": f"{gone} gone", "reason": decision.reason,
           "moved_layers": decision.moved_layers, "switch_s": switch_s, "n_layers": p.n_layers,
           "tpot_s": p.predicted.get("per_token_s"),
           "stages": [{"device": s.device, "start": s.shard.start, "end": s.shard.end,
                       "variant": s.variant, "codec": s.codec} for s in p.stages]}
    return row, p


def _planner_variants(cfg: DemoConfig, names: set[str]) -> dict[str, Variant]:
    from edgeweave.compress.variants import variant_path
    from edgeweave.profile.variants import DEFAULT_VARIANTS, variant_from_manifest

    out = {"fp32": DEFAULT_VARIANTS["fp32"]}
    for n in set(cfg.variants) | names:
        if n != "fp32":
            out[n] = variant_from_manifest(variant_path(n, cfg.model))
    return out


def _calibration() -> dict[str, Calibration]:
    """The host probe's calibration when one is cached (``edgeweave profile``), else none."""
    from edgeweave.profile.probe import load_cached

    host = load_cached()
    return {"calibration": host.calibration()} if host is not None else {}


def _label(plan: Plan) -> str:
    return " → ".join(f"{s.device}[{s.shard.start},{s.shard.end}) {s.variant}" for s in plan.stages)


def _mean(xs: list[Any]) -> float | None:
    v = [x for x in xs if x is not None]
    return sum(v) / len(v) if v else None
