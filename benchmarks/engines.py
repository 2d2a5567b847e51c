"""Decode speed of our engines against the ones a user would pick instead.

One run per engine, each in a fresh process (``--no-isolate``: all in this one), same prompt,
batch 1, greedy, ``--new-tokens`` (128) new tokens,
``--threads`` (2) threads everywhere:

* edgeweave torch fp32 / int8 / int4 (int8/int4 = the compression package's cached
  ``variant`` artifacts),
* edgeweave ONNX fp32 / int8 / int4 (graphs exported from the same artifacts), whole graph
  and a 2-stage split (in-process chain), plus int4/int8 with the exporter's own RTN g32
  (the recipe onnxruntime-genai uses),
* onnxruntime-genai fp32 / int8 / int4 built by its model builder from the same fp32 weights,
* llama.cpp F32 / Q8_0 / Q4_0 when ``llama_cpp`` is importable (``_llamacpp.py``: it has no
  wheel and compiles for ~15-20 min, so it is never built by the benchmark itself).

Every row carries the bytes of weights (and KV cache) read per decode step and its fraction
of the memory-bandwidth roofline (measured read bandwidth / bytes per token).

    flock /tmp/edgeweave-cpu.lock .venv/bin/python benchmarks/engines.py
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _anchors import genai_folder, onnx_weight_bytes, run_genai  # noqa: E402
from _common import emit_result, print_table, run_child, write_json  # noqa: E402

from edgeweave.paths import home  # noqa: E402

QUESTION = ("You are the assistant of a smart home. The living room sensor reports 27.5 C and "
            "62% humidity, the window is closed and nobody is home. Explain what the heating, "
            "ventilation and blinds should do for the next hour, step by step.")


# -- measurement helpers -----------------------------------------------------------------------
def bandwidth_gbs(threads: int) -> float:
    """Best-of-5 read bandwidth of a 1 GiB fp32 sum with ``threads`` threads."""
    torch.set_num_threads(threads)
    x = torch.ones(256 * 1024 * 1024)
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        float(x.sum())
        best = max(best, x.nbytes / (time.perf_counter() - t))
    del x
    return best / 1e9


def torch_weight_bytes(model: torch.nn.Module) -> int:
    total = 0
    for name, m in model.named_modules():
        if name == "embed_tokens" or name.startswith("embed_tokens."):
            continue  # one row per token
        if callable(getattr(m, "nbytes", None)):
            total += m.nbytes()
            continue
        for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
            total += t.numel() * t.element_size()
    return total


def kv_bytes_per_step(cfg, context: int) -> int:
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 4 * context


# -- runners ---------------------------------------------------------------------------------
def run_logits_engine(engine, ids: list[int], new: int) -> dict[str, Any]:
    """Prefill then greedy decode ``new`` tokens; time the decode steps only."""
    t0 = time.perf_counter()
    logits = engine.prefill(ids)
    t1 = time.perf_counter()
    tokens = [int(np.argmax(logits))]
    for _ in range(new - 1):
        tokens.append(int(np.argmax(engine.decode(tokens[-1]))))
    t2 = time.perf_counter()
    return {"prefill_tps": len(ids) / (t1 - t0), "decode_tps": (new - 1) / (t2 - t1),
            "tokens": tokens}


# -- cases -------------------------------------------------------------------------------------
def _stage_chain(model: str, backend: str, variant: str, cuts: list[int], threads: int,
                 max_len: int, spec_kw: dict[str, Any] | None = None, spinning: str = "run",
                 shared_pool: bool = False):
    from edgeweave.models.catalog import resolve
    from edgeweave.models.config import ModelConfig
    from edgeweave.runtime.engines.base import EngineConfig, create_engine
    from edgeweave.runtime.engines.onnx_chain import StageChain
    from edgeweave.types import Shard

    n = ModelConfig.from_hf(json.loads((resolve(model)[1] / "config.json").read_text())
                            ).num_layers
    bounds = [0, *cuts, n]
    stages = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        cfg = EngineConfig(model, Shard(a, b, n), variant, backend, threads)
        if backend == "onnx":
            from edgeweave.runtime.engines.onnx import SessionProfile, build_engine

            profile = SessionProfile(threads=threads, spinning=spinning,
                                     shared_pool=shared_pool)
            stages.append(build_engine(cfg, profile, overrides=spec_kw,
                                       from_fp32=spec_kw is not None))
        else:
            stages.append(create_engine(cfg))
    return StageChain(stages, max_len)


def _chain_bytes(chain) -> int:
    total = 0
    for st in chain.stages:
        if hasattr(st, "path"):
            total += onnx_weight_bytes(st.path)
        else:
            total += torch_weight_bytes(st.model)
    return total


def cases(args) -> list[tuple[str, str, str, Callable[[], tuple[Any, int]]]]:
    """(engine, precision, note, build) rows in the order they run."""
    out: list[tuple[str, str, str, Callable[[], tuple[Any, int]]]] = []
    m, t, ml = args.model, args.threads, args.max_len
    wanted = set(args.only.split(",")) if args.only else None
    precisions = tuple(args.precisions.split(","))

    def add(engine, prec, note, fn):
        if wanted is None or engine in wanted:
            out.append((engine, prec, note, fn))

    def chain(backend, prec, cuts=(), spec_kw=None):
        def build():
            # "run" (spin inside a run only) measured faster than "always" for the whole graph
            # too: 126 vs 118 tok/s at int4, 95 vs 73 at int8 g32 (our Python loop between
            # tokens needs the core a spinning worker would hold)
            spin = args.spinning if args.spinning != "auto" else "run"
            c = _stage_chain(m, backend, prec, list(cuts), t, ml, spec_kw, spin,
                             args.shared_pool)
            return c, _chain_bytes(c)
        return build

    rtn_kw = {"group_size": 32, "symmetric": True}  # onnxruntime-genai's default recipe
    cut = args.cut

    def genai(prec):
        def build():
            from edgeweave.models.catalog import resolve
            name, folder = resolve(m)
            out_dir = genai_folder(folder, name, prec, t)
            model_file = next(out_dir.glob("*.onnx"))
            return out_dir, onnx_weight_bytes(model_file)
        return build

    def llama(prec):
        def build():
            import _llamacpp

            from edgeweave.models.catalog import BUNDLED

            gguf = _llamacpp.quantized_gguf(BUNDLED[m].source(), home() / "llama-cpp" / m, prec, t)
            return _llamacpp.load(gguf, t, ml), _llamacpp.gguf_weight_bytes(gguf)
        return build

    has_llama = importlib.util.find_spec("llama_cpp") is not None and m in _bundled()
    # grouped by precision; rows that need no compression artifact first, so that a
    # partial run (incremental JSON) already holds the comparisons
    for prec in precisions:
        rtn = args.weights == "rtn" and prec != "fp32"
        note = "fp32 weights" if prec == "fp32" else (
            "exporter RTN g32 sym" if rtn else f"compress.variant({prec!r}) artifact")
        kw = rtn_kw if rtn else None
        add("onnxruntime-genai", prec, "model builder, same fp32 weights"
            + (", RTN sym block 32, accuracy_level 4" if prec != "fp32" else ""), genai(prec))
        if has_llama:
            import _llamacpp

            add("llama.cpp", prec, f"llama-cpp-python, bundled GGUF re-quantized to "
                f"{_llamacpp.FTYPES[prec][0]} by llama.cpp", llama(prec))
        if args.weights == "artifact" and prec != "fp32":
            add("edgeweave-onnx-rtn", prec, "exporter RTN g32 sym (genai's recipe)",
                chain("onnx", prec, (), rtn_kw))
        add("edgeweave-torch", prec, "fp32 weights" if prec == "fp32" else
            f"compress.variant({prec!r}) artifact", chain("torch", prec))
        add("edgeweave-onnx", prec, note, chain("onnx", prec, (), kw))
        if args.weights == "artifact" and prec == "int4" and args.sym_int4:
            add("edgeweave-onnx-sym", prec, "compress.variant('int4-sym') artifact: GPTQ g32 "
                "symmetric", chain("onnx", "int4-sym"))
        add("edgeweave-onnx-split", prec, f"2 stages [0,{cut})+[{cut},end), " + note,
            chain("onnx", prec, (cut,), kw))
    return out


def measure(args, ids: list[int], engine: str, build) -> dict[str, Any]:
    """Build one engine and time ``--repeat`` greedy decodes; errors become a row."""
    gc.collect()
    threads = torch.get_num_threads()
    if engine.startswith("edgeweave-onnx"):
        # torch only takes the argmax here; its OpenMP workers would otherwise wake on the
        # core an ORT worker spins on, every token
        torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        obj, weight_bytes = build()
        build_s = time.perf_counter() - t0
        if engine == "onnxruntime-genai":
            import onnxruntime_genai as og

            obj = og.Model(str(obj))
            runs = [run_genai(obj, ids, args.new_tokens) for _ in range(args.repeat)]
        elif engine == "llama.cpp":
            import _llamacpp

            _llamacpp.run(obj, ids[:16], 8)  # warm-up
            runs = [_llamacpp.run(obj, ids, args.new_tokens) for _ in range(args.repeat)]
        else:
            run_logits_engine(obj, ids[:16], 8)  # warm-up: arenas, prepacked weights
            runs = [run_logits_engine(obj, ids, args.new_tokens) for _ in range(args.repeat)]
        del obj
    except Exception as e:  # noqa: BLE001 - a failing engine is a row, not a crash
        return {"error": f"{type(e).__name__}: {e}"[:300]}
    finally:  # with --no-isolate the torch rows that follow keep their own thread count
        torch.set_num_threads(threads)
    speeds = sorted(r["decode_tps"] for r in runs)
    res = max(runs, key=lambda r: r["decode_tps"])
    res.update(decode_tps_median=speeds[len(speeds) // 2], decode_tps_runs=speeds,
               build_s=build_s, weight_bytes=weight_bytes)
    return res


def _in_child(k: int) -> dict[str, Any]:
    """Row ``k`` measured in a fresh process: no thread pool, arena or spinning worker of an
    earlier engine is left to compete with it (in one process, row order changed results)."""
    got, proc = run_child([*sys.argv, "--row", str(k)])
    if got is None:
        return {"error": f"child exited {proc.returncode}: {proc.stderr[-300:]}"}
    return got


def _bundled() -> set[str]:
    from edgeweave.models.catalog import BUNDLED

    return set(BUNDLED)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--only", default="", help="comma-separated engine names")
    ap.add_argument("--precisions", default="fp32,int8,int4", help="comma-separated subset")
    ap.add_argument("--sym-int4", action=argparse.BooleanOptionalAction, default=True,
                    help="an int4 row from the symmetric GPTQ g32 artifact (built once, ~2 min)")
    ap.add_argument("--out", default="engines")
    ap.add_argument("--spinning", choices=("auto", "run", "always", "off"), default="auto",
                    help="ONNX Runtime thread spinning (see SessionProfile); auto = 'run'")
    ap.add_argument("--cut", type=int, default=15, help="block where the split starts stage 2")
    ap.add_argument("--shared-pool", action=argparse.BooleanOptionalAction, default=True,
                    help="one process-wide ONNX Runtime thread pool for all our sessions")
    ap.add_argument("--repeat", type=int, default=3,
                    help="decode runs per engine and round (best and median reported)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="times every row is measured, interleaved (paired ratios per round)")
    ap.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=True,
                    help="measure every row in a fresh child process")
    ap.add_argument("--row", type=int, default=None, help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--weights", choices=("artifact", "rtn"), default="artifact",
                    help="int8/int4 ONNX rows from compression artifacts, or the exporter's "
                         "RTN g32 only (no calibration data needed, e.g. random weights)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from edgeweave.models import load
    from edgeweave.runtime.generate import encode_prompt

    lm = load(args.model)
    ids = encode_prompt(lm.tokenizer, QUESTION, chat=True)
    cfg = lm.config
    del lm
    bw = bandwidth_gbs(args.threads) if args.row is None else 0.0  # children only measure
    kv = kv_bytes_per_step(cfg, len(ids) + args.new_tokens // 2)
    if args.row is None:
        print(f"prompt {len(ids)} tokens, {args.new_tokens} new, {args.threads} threads, "
              f"read bandwidth {bw:.1f} GB/s")
    rows: list[dict[str, Any]] = []
    ref_tokens: dict[str, list[int]] = {}
    all_cases = cases(args)
    if args.row is not None:  # the child: measure this one row, hand it to the parent
        engine, _, _, build = all_cases[args.row]
        emit_result(measure(args, ids, engine, build))
        return
    # Rounds run every row once, in order; a pair's paired ratio is the median over rounds
    # of the two rows' speeds in the same round (this host drifts by 20-30 % in minutes).
    per_row: list[list[dict[str, Any]]] = [[] for _ in all_cases]
    for rnd in range(args.rounds):
        for k, (engine, prec, _, build) in enumerate(all_cases):
            res = _in_child(k) if args.isolate else measure(args, ids, engine, build)
            per_row[k].append(res)
            if "error" not in res:
                print(f"round {rnd + 1}/{args.rounds} {engine:22s} {prec}: "
                      f"{res['decode_tps']:.1f} tok/s", flush=True)
        write_json(args.out, {"model": args.model, "partial": True, "rounds_done": rnd + 1,
                              "per_row": [{"engine": c[0], "precision": c[1], "runs": [
                                  {k: v for k, v in r.items() if k != "tokens"} for r in rr]}
                                  for c, rr in zip(all_cases, per_row, strict=True)]})
    for (engine, prec, note, _), results in zip(all_cases, per_row, strict=True):
        row: dict[str, Any] = {"engine": engine, "precision": prec, "note": note}
        ok = [r for r in results if "error" not in r]
        if not ok:
            row["error"] = results[0]["error"]
            rows.append(row)
            print(f"{engine} {prec}: {row['error']}")
            continue
        res = max(ok, key=lambda r: r["decode_tps"])
        runs = sorted(x for r in ok for x in r["decode_tps_runs"])
        res.update(decode_tps_median=statistics.median(runs), decode_tps_runs=runs,
                   decode_tps_rounds=[r["decode_tps"] if "error" not in r else None
                                      for r in results])
        row["build_s"] = res.pop("build_s")
        weight_bytes = res.pop("weight_bytes")
        tokens = res.pop("tokens")
        if engine == "edgeweave-torch":
            ref_tokens[prec] = tokens
        ref = ref_tokens.get("fp32") or tokens
        same = next((i for i, (a, b) in enumerate(zip(ref, tokens, strict=False)) if a != b),
                    min(len(ref), len(tokens)))
        per_token = weight_bytes + kv
        row.update(res, weight_mb=weight_bytes / 1e6, bytes_per_token_mb=per_token / 1e6,
                   roofline_tps=bw * 1e9 / per_token,
                   roofline_fraction=res["decode_tps"] * per_token / (bw * 1e9),
                   same_tokens_as_torch_fp32=same)
        rows.append(row)
    if importlib.util.find_spec("llama_cpp") is None:
        rows.append({"engine": "llama.cpp", "precision": "F32/Q8_0/Q4_0",
                     "note": "not installed (no wheel on PyPI; see benchmarks/_llamacpp.py "
                             "for the ~15-20 min build)"})
    summary = _summary(rows)
    _print(rows, summary)
    write_json(args.out, {"model": args.model, "threads": args.threads,
                          "weights": args.weights, "spinning": args.spinning,
                          "new_tokens": args.new_tokens, "prompt_tokens": len(ids),
                          "bandwidth_gbs": bw, "rows": rows, "summary": summary})


def _tps(rows, engine, prec, key: str = "decode_tps") -> float | None:
    return next((r.get(key) for r in rows
                 if r["engine"] == engine and r["precision"] == prec), None)


PAIRS = (  # (ratio name, numerator engine, denominator engine)
    ("onnx_vs_llamacpp", "edgeweave-onnx", "llama.cpp"),
    ("onnx_rtn_vs_llamacpp", "edgeweave-onnx-rtn", "llama.cpp"),
    ("onnx_vs_genai", "edgeweave-onnx", "onnxruntime-genai"),
    ("onnx_rtn_vs_genai", "edgeweave-onnx-rtn", "onnxruntime-genai"),
    ("onnx_sym_vs_llamacpp", "edgeweave-onnx-sym", "llama.cpp"),
    ("onnx_sym_vs_genai", "edgeweave-onnx-sym", "onnxruntime-genai"),
    ("split_vs_whole", "edgeweave-onnx-split", "edgeweave-onnx"),
    ("onnx_vs_torch", "edgeweave-onnx", "edgeweave-torch"),
)


def _summary(rows) -> dict[str, Any]:
    """Ratios of the best run, of the median run (``..._median``) and, with several rounds,
    the median over rounds of same-round ratios (``..._paired``): on a noisy host the last
    is the one to read."""
    out: dict[str, Any] = {}
    for prec in ("fp32", "int8", "int4"):
        for name, a, b in PAIRS:
            for key, suffix in (("decode_tps", ""), ("decode_tps_median", "_median")):
                num, den = _tps(rows, a, prec, key), _tps(rows, b, prec, key)
                if num and den:
                    out[f"{name}_{prec}{suffix}"] = num / den
            num, den = (_tps(rows, a, prec, "decode_tps_rounds"),
                        _tps(rows, b, prec, "decode_tps_rounds"))
            if num and den and len(num) > 1:
                pairs = [x / y for x, y in zip(num, den, strict=True) if x and y]
                if pairs:
                    out[f"{name}_{prec}_paired"] = statistics.median(pairs)
    return out


def _print(rows, summary) -> None:
    cols = ["engine", "prec", "decode tok/s", "median", "prefill tok/s", "MB/token", "roofline",
            "= torch fp32", "build s"]
    table = [[r["engine"], r["precision"], r.get("decode_tps", "-"),
              r.get("decode_tps_median", "-"), r.get("prefill_tps", "-"),
              r.get("bytes_per_token_mb", "-"), r.get("roofline_fraction", "-"),
              r.get("same_tokens_as_torch_fp32", "-"), r.get("build_s", "-")] for r in rows]
    print_table("decode speed (batch 1, greedy)", cols, table)
    print_table("ratios (targets: onnx/genai >= 0.9, onnx/llama.cpp >= 1.0, split/whole >= 0.85)",
                ["ratio", "value"], [[k, v] for k, v in summary.items()])


if __name__ == "__main__":
    main()
