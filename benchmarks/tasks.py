"""Task suite benchmark: SmolLM2-135M on every task with zero-shot, random, kNN and
kNN+ordering demonstrations, next to a non-LLM baseline; plus DemonstrationStore caps under a
100k-insert stream and kNN selection latency at 10k entries.

Run (heavy: take the shared CPU lock):
    flock /tmp/edgeweave-cpu.lock .venv/bin/python benchmarks/tasks.py
Writes results/tasks.json (rewritten after every task, so a cut run keeps what it measured).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from edgeweave.paths import atomic_write_json  # noqa: E402

# (row name, demonstrations, ordering, constrained to the task's answer format)
CONDITIONS = (("zero-shot", "none", None, False), ("random", "random", None, False),
              ("knn", "knn", None, False), ("knn+order", "knn", "most_similar_last", False),
              ("zero+cons", "none", None, True), ("knn+cons", "knn", "most_similar_last", True),
              # the template chosen by tasks tune-prompt on a validation split of train items
              ("tuned+cons", "knn", "most_similar_last", True),
              # a LoRA adapter trained on the task's train split (finetune --data task:NAME)
              ("adapter+cons", "none", None, True), ("adapter+knn+cons", "knn",
                                                     "most_similar_last", True),
              # an adapter trained on prompts with kNN demonstrations (task:NAME:knn), asked
              # the way it was trained
              ("knn-adapter+knn+cons", "knn", "most_similar_last", True))
SENSOR_CLASSIFICATION = ("activity", "occupancy", "appliance")


def store_stream(n_inserts: int, policy: str, dim: int, cap: int, cap_bytes: int) -> dict:
    from edgeweave.prompt.demos import DemonstrationStore, StoreConfig

    rng = np.random.default_rng(0)
    store = DemonstrationStore(StoreConfig(dim=dim, max_entries=cap, max_bytes=cap_bytes,
                                           eviction=policy))
    centers = rng.normal(size=(16, dim)).astype(np.float32)
    max_n = max_b = 0
    t0 = time.perf_counter()
    for i in range(n_inserts):
        c = int(rng.integers(16))
        emb = centers[c] + 0.3 * rng.normal(size=dim).astype(np.float32)
        text = "x" * int(rng.integers(20, 400))  # variable sizes exercise the byte cap
        did = store.add(text, f"label{c}", emb, f"label{c}")
        if policy == "utility" and i % 7 == 0:
            store.feedback([did], float(c % 2))
        max_n, max_b = max(max_n, len(store)), max(max_b, store.nbytes)
    dt = time.perf_counter() - t0
    return {"policy": policy, "inserts": n_inserts, "dim": dim, "max_entries": cap,
            "max_bytes": cap_bytes, "peak_entries": max_n, "peak_bytes": max_b,
            "within_cap": max_n <= cap and max_b <= cap_bytes, "evicted": store.evicted,
            "inserts_per_s": n_inserts / dt}


def selection_latency(n: int, dim: int, k: int = 4, queries: int = 300) -> dict:
    from edgeweave.prompt.demos import DemonstrationStore, StoreConfig

    rng = np.random.default_rng(1)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    store = DemonstrationStore(StoreConfig(dim=dim, max_entries=n, max_bytes=1 << 32))
    store.add_many((f"demo {i}", "out", emb[i], None) for i in range(n))
    ts = []
    for j in range(queries):
        q = emb[j] + 0.1 * rng.normal(size=dim).astype(np.float32)
        t = time.perf_counter()
        store.select(q, k)
        ts.append(time.perf_counter() - t)
    # correctness next to speed: exact top-k by brute force for one query
    q = emb[0]
    got = [s.demo.id for s in store.select(q, k)]
    normed = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    want = [int(i) + 1 for i in np.argsort(-(normed @ (q / np.linalg.norm(q))))[:k]]
    ms = np.asarray(ts) * 1000
    return {"entries": n, "dim": dim, "k": k, "median_ms": float(np.median(ms)),
            "p90_ms": float(np.percentile(ms, 90)), "exact_topk": got == want}


def persistence(n: int, synchronous: str) -> dict:
    from edgeweave.prompt.demos import DemonstrationStore, StoreConfig

    rng = np.random.default_rng(2)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "demos.sqlite"
        cfg = StoreConfig(dim=64, max_entries=n // 2, max_bytes=1 << 30,
                          synchronous=synchronous)
        store = DemonstrationStore(cfg, path)
        t0 = time.perf_counter()
        for i in range(n):
            store.add(f"in {i}", "out", rng.normal(size=64), None)
        dt = time.perf_counter() - t0
        store.close()
        t1 = time.perf_counter()
        again = DemonstrationStore(cfg, path)
        reopen = time.perf_counter() - t1
        return {"synchronous": synchronous, "inserts": n, "inserts_per_s": n / dt,
                "reopen_s": reopen, "entries_after_reopen": len(again)}


def fmt(x: float) -> str:
    return f"{x:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="activity,occupancy,appliance,anomaly,forecast,wikiqa")
    ap.add_argument("--limit", type=int, default=24, help="test items per sensor class. task")
    ap.add_argument("--limit-other", type=int, default=5, help="test items per other task")
    ap.add_argument("--k", type=int, default=4)
    # SmolLM2 spends a token per digit: one sensor demo is ~60-80 tokens, so a 256-token
    # budget left room for a single demo (and with one demo the model picked the other label)
    ap.add_argument("--budget", type=int, default=512)
    ap.add_argument("--inserts", type=int, default=100_000)
    ap.add_argument("--skip-llm", action="store_true")
    ap.add_argument("--adapter-steps", type=int, default=60)
    ap.add_argument("--conditions", default=",".join(c[0] for c in CONDITIONS),
                    help="rows to run (names from CONDITIONS)")
    ap.add_argument("--skip-store", action="store_true", help="only the task suite")
    ap.add_argument("--encodings", default="", help="also compare these encodings on activity")
    ap.add_argument("--out", default="results/tasks.json")
    args = ap.parse_args()
    results: dict = {"store": {}, "tasks": {}, "settings": vars(args)}

    def save() -> None:
        atomic_write_json(args.out, results)

    if not args.skip_store:
        store_benchmarks(args, results)
    save()
    if args.skip_llm:
        return 0
    return run_tasks(args, results, save)


def store_benchmarks(args: argparse.Namespace, results: dict) -> None:
    print("== DemonstrationStore ==", flush=True)
    results["store"]["stream"] = [
        store_stream(args.inserts, "lru", 384, 1000, 3 << 19),
        store_stream(args.inserts // 5, "utility", 384, 1000, 3 << 19),
        store_stream(args.inserts // 5, "diversity", 64, 1000, 3 << 18),
    ]
    for r in results["store"]["stream"]:
        print(f"stream {r['policy']:9s} {r['inserts']:>6d} inserts dim {r['dim']}: peak "
              f"{r['peak_entries']}/{r['max_entries']} entries, {r['peak_bytes']}/"
              f"{r['max_bytes']} B, within cap {r['within_cap']}, "
              f"{r['inserts_per_s']:.0f} inserts/s", flush=True)
    results["store"]["selection"] = [selection_latency(10_000, 384), selection_latency(10_000, 64)]
    for r in results["store"]["selection"]:
        print(f"select k={r['k']} of {r['entries']} x {r['dim']}: median {r['median_ms']:.2f} ms,"
              f" p90 {r['p90_ms']:.2f} ms, exact top-k {r['exact_topk']}", flush=True)
    results["store"]["persistence"] = [persistence(2000, "FULL"), persistence(2000, "NORMAL")]
    for r in results["store"]["persistence"]:
        print(f"sqlite synchronous={r['synchronous']}: {r['inserts_per_s']:.0f} inserts/s, "
              f"reopen {r['reopen_s'] * 1000:.0f} ms", flush=True)


def task_adapter(task: str, steps: int, demos: str = "none", k: int = 4,  # noqa: ANN201
                 budget: int = 512):
    """A LoRA adapter trained on the task's train split (as ``edgeweave finetune --data
    task:NAME[:knn]`` does), loaded unmerged on the fp32 torch engine (the weights the other
    rows evaluate); returns the model and the training record."""
    from edgeweave.finetune.config import LoRAConfig, TrainConfig
    from edgeweave.finetune.run import finetune
    from edgeweave.finetune.task_data import TaskData
    from edgeweave.runtime.adapters import AdapterSpec
    from edgeweave.runtime.local import EngineChoice, LocalModel

    out = Path(tempfile.mkdtemp(prefix=f"ew-{task}-lora-"))
    data = TaskData((task,), demos, k=k, ordering="most_similar_last" if demos != "none"
                    else None, budget_tokens=budget)
    res = finetune("smollm2-135m-instruct", data, lora=LoRAConfig(rank=8, alpha=16),
                   train_cfg=TrainConfig(steps=steps, lr=2e-3, batch_size=4, micro_batch_size=4,
                                         seq_len=256 if demos == "none" else budget + 32),
                   out=out / "adapter", limit=10_000)
    lm = LocalModel.load("smollm2-135m-instruct", EngineChoice("torch", "fp32"),
                         adapters=[AdapterSpec("task", out / "adapter")])
    record = {"steps": steps, "data": data.spelling(), "n_train": res.n_train,
              "eval_loss_before": res.eval_loss_before,
              "eval_loss_after": res.eval_loss_after, "train_s": res.train["seconds"]}
    print(f"{task}: adapter ({data.spelling()}) {steps} steps on {res.n_train} train examples, "
          f"held-out loss "
          f"{res.eval_loss_before:.2f} -> {res.eval_loss_after:.2f}", flush=True)
    return lm, record


def run_tasks(args: argparse.Namespace, results: dict, save) -> int:  # noqa: ANN001
    from edgeweave.bench.tasks import baseline_task, evaluate_task
    from edgeweave.bench.tasks.tuning import tune_prompt
    from edgeweave.models import load

    lm = load()
    wanted = args.conditions.split(",")
    conditions = [c for c in CONDITIONS if c[0] in wanted]
    print("\n== SmolLM2-135M on the task suite ==", flush=True)
    header = (f"{'task':10s} {'metric':18s} {'baseline':>8s} " +
              " ".join(f"{c[0]:>10s}" for c in conditions) + "  prompt tok / latency s / demos"
              "  invalid")
    print(header, flush=True)
    for task in args.tasks.split(","):
        limit = args.limit if task in SENSOR_CLASSIFICATION else args.limit_other
        base = baseline_task(task, limit=limit)
        rows = {"baseline": base}
        adapted = {}
        if any(c[0].startswith("adapter") for c in conditions):
            adapted["adapter"], rows["adapter"] = task_adapter(task, args.adapter_steps)
        if any(c[0].startswith("knn-adapter") for c in conditions):
            adapted["knn-adapter"], rows["knn-adapter"] = task_adapter(
                task, args.adapter_steps, "knn", args.k, args.budget)
        for name, demos, ordering, constrained in conditions:
            template = None
            model, factory = lm, None
            trained = name.split("+")[0]
            if trained in adapted:
                model, factory = adapted[trained], (lambda m: m.new_session(2048, adapter="task"))
            if name == "tuned+cons":
                tuned = tune_prompt(task, lm, demos=demos, k=args.k, constrained=True,
                                    budget_tokens=args.budget)
                template = tuned.best.candidate.template
                rows["tuning"] = tuned.to_dict()
            rows[name] = evaluate_task(task, model, demos=demos, limit=limit, k=args.k,
                                       ordering=ordering, budget_tokens=args.budget,
                                       constrained=constrained, template=template,
                                       engine_factory=factory)
        results["tasks"][task] = rows
        save()
        metric = base["metric"]
        extra = ""
        if task == "wikiqa":
            extra = "  halluc " + "/".join(fmt(rows[c[0]]["hallucination_rate"])
                                           for c in conditions)
        print(f"{task:10s} {metric:18s} {fmt(base['score']):>8s} "
              + " ".join(f"{fmt(rows[c[0]]['score']):>10s}" for c in conditions) + "  "
              + " ".join(f"{rows[c[0]]['mean_prompt_tokens']:.0f}/"
                         f"{rows[c[0]]['mean_latency_s']:.1f}/{rows[c[0]]['mean_demos']:.1f}"
                         for c in conditions)
              + "  " + "/".join(fmt(rows[c[0]]["invalid_rate"]) for c in conditions)
              + extra, flush=True)
    if args.encodings:
        print("\n== Sensor encodings on activity (kNN+order demos): accuracy per token ==")
        results["encodings"] = []
        for enc in args.encodings.split(","):
            same = results["tasks"].get("activity", {}).get("knn+order")
            if same is not None and same["encoding"] == enc:
                r = dict(same)  # the task's default encoding: that row was measured above
            else:
                r = evaluate_task("activity", lm, demos="knn", limit=args.limit, k=args.k,
                                  ordering="most_similar_last", encoding=enc,
                                  budget_tokens=args.budget)
            r["accuracy_per_100_tokens"] = 100 * r["accuracy"] / r["mean_prompt_tokens"]
            results["encodings"].append(r)
            save()
            print(f"{enc:12s} accuracy {r['accuracy']:.2f}  prompt {r['mean_prompt_tokens']:.0f} "
                  f"tok  demos {r['mean_demos']:.1f}  acc/100tok "
                  f"{r['accuracy_per_100_tokens']:.3f}", flush=True)
    targets = {}
    for task in SENSOR_CLASSIFICATION:
        if task in results["tasks"]:
            r = results["tasks"][task]
            if not {"knn", "knn+order", "zero-shot", "random"} <= set(r):
                continue
            best_knn = max(r["knn"]["score"], r["knn+order"]["score"])
            targets[task] = {
                "knn_minus_zero_shot": best_knn - r["zero-shot"]["score"],
                "knn_minus_random": best_knn - r["random"]["score"],
                "met": best_knn - max(r["zero-shot"]["score"], r["random"]["score"]) >= 0.10}
    results["targets"] = targets
    save()
    print("\ntargets (kNN >= +10 points over zero-shot and random):", targets, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
