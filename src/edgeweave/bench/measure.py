"""Per-variant measurements on this host, run in a fresh process per variant so that each
variant's peak RSS is its own (a process's high-water mark only ever grows)."""

from __future__ import annotations

import os
import time
from typing import Any

from edgeweave.bench.energy import EnergyMeter
from edgeweave.bench.store import ResultStore

DECODE_PROMPT = ("The gateway in the kitchen collects temperature, humidity, light and CO2 readings "
                 "from four battery powered sensors every thirty seconds. Summarise what it does.")


def load_variant(model: str, variant: str) -> tuple[Any, dict[str, Any]]:
    """(LoadedModel, size info) for ``fp32`` (the converted checkpoint) or a named artifact."""
    if variant == "fp32":
        from edgeweave.models import load
        from edgeweave.models.checkpoint import weight_files

        lm = load(model)
        size = sum(f.stat().st_size for f in weight_files(lm.folder))
        return lm, {"size_mb": size / 1e6, "bits_per_weight": 32.0}
    from edgeweave.compress import load_artifact, read_manifest
    from edgeweave.compress import variant as build_variant

    path = build_variant(variant, model)
    manifest = read_manifest(path)
    size = manifest.get("stats", {})
    lm = load_artifact(path)
    return lm, {"size_mb": (size.get("size_bytes") or 0) / 1e6 or None,
                "bits_per_weight": size.get("bits_per_weight"), "artifact": str(path)}


def load_fast(model: str, variant: str, backend: str) -> tuple[Any, dict[str, Any]]:
    """(engine-backed ``LocalModel``, size info) of ``variant`` on ``backend``."""
    from edgeweave.runtime.local import EngineChoice, LocalModel

    if variant == "fp32":
        from edgeweave.models.catalog import resolve

        size = sum(f.stat().st_size for f in resolve(model)[1].glob("*.safetensors"))
        info: dict[str, Any] = {"size_mb": size / 1e6, "bits_per_weight": 32.0}
    else:
        from edgeweave.compress.manifest import read_manifest
        from edgeweave.compress.variants import variant as build_variant

        path = build_variant(variant, model)
        stats = read_manifest(path).get("stats", {})
        info = {"size_mb": (stats.get("size_bytes") or 0) / 1e6 or None,
                "bits_per_weight": stats.get("bits_per_weight"), "artifact": str(path)}
    return LocalModel.load(model, EngineChoice(backend, variant)), info


def measure_variant(store_path: str, model: str, variant: str, suite: dict[str, Any],
                    tasks: list[str], host_power_w: float, backend: str = "") -> int:
    """Append this variant's rows to the store; returns how many rows were added.

    ``backend`` "" runs the default engine (ONNX Runtime: what `edgeweave serve` runs; its
    perplexity is teacher-forced through the same graph); ``torch`` the reference."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from edgeweave.runtime.policy import ProcessPolicy

    ProcessPolicy.for_this_process().apply()  # as every verb that runs stages does
    from edgeweave.bench.tasks import evaluate_task
    from edgeweave.compress.evaluate import perplexity
    from edgeweave.runtime.generate import SamplingParams, generate
    from edgeweave.runtime.local import EngineChoice

    backend = EngineChoice(backend, variant).backend
    store = ResultStore(store_path)
    added = 0
    key = f"variant/{variant}"
    if backend == "torch":
        from edgeweave.runtime.engine import LocalEngine
        from edgeweave.runtime.fast import accelerate_decode

        lm, info = load_variant(model, variant)
        accelerate_decode(lm.model)  # no-op for packed low-bit modules

        def session(n: int) -> Any:
            return LocalEngine(lm.model, max_len=n)
        factory = None
    else:
        lm, info = load_fast(model, variant, backend)
        session = lm.new_session

        def factory(m: Any) -> Any:
            return m.new_session(2048)
    info["backend"] = backend
    if key not in store:
        t0 = time.perf_counter()
        ppl = perplexity(lm, "wikipedia", tokens=suite["ppl_tokens"], seed=suite["seed"])
        ppl_s = time.perf_counter() - t0
        engine = session(512)
        params = SamplingParams(max_tokens=suite["decode_tokens"], ignore_eos=True)
        generate(engine, lm.tokenizer, DECODE_PROMPT, SamplingParams(max_tokens=4), chat=True)
        with EnergyMeter() as meter:
            r = generate(engine, lm.tokenizer, DECODE_PROMPT, params, chat=True)
        m = r.metrics
        tpot = 1.0 / m.decode_tps if m.decode_tps else None
        measured = meter.joules / max(m.generated_tokens, 1) if meter.joules is not None else None
        store.add({
            "key": key, "kind": "variant", "variant": variant, "model": model, **info,
            "ppl_wiki": _value(ppl), "ppl_seconds": ppl_s, "decode_tps": m.decode_tps,
            "ttft_s": m.ttft_s, "tpot_s": tpot, "prefill_tps": m.prefill_tps,
            "peak_rss_mb": m.peak_rss_mb, "generated_tokens": m.generated_tokens,
            "energy_j_per_token": measured if measured is not None else
            (tpot * host_power_w if tpot else None),
            "energy_source": "rapl" if measured is not None else "model",
            "sample": r.text[:200],
        })
        added += 1
    for task in tasks:
        for demos in suite["demos"]:
            tkey = f"task/{variant}/{task}/{demos}"
            if tkey in store:
                continue
            res = evaluate_task(task, lm, demos=demos, limit=suite["task_limit"],
                                seed=suite["seed"], engine_factory=factory)
            store.add({"key": tkey, "kind": "task", "variant": variant, "task": task, "demos": demos,
                       **{k: v for k, v in res.items() if _scalar(v)}, "value": res.get("score")})
            added += 1
    return added


def _value(ppl: Any) -> float:
    if isinstance(ppl, dict):
        return float(ppl.get("perplexity") or ppl.get("ppl"))
    return float(ppl)


def _scalar(v: Any) -> bool:
    return isinstance(v, str | int | float | bool) or v is None
