"""Compression Pareto table on the bundled SmolLM2-135M (run under the shared CPU lock):

    flock /tmp/edgeweave-cpu.lock .venv/bin/python benchmarks/compress.py

Each recipe is compressed in this process (compression time), saved as a verified artifact
(size), then evaluated in a fresh child process so peak RSS belongs to that model alone:
decode tok/s from the generation metrics (LocalEngine + generate; fp32 with
``accelerate_decode``), then held-out Wikipedia and Shakespeare perplexity. Distillation
trains a student with 18 of 30 blocks twice (KD vs plain CE, same steps and batches).
Writes results/compress.json (entries merge across runs, so ``--only`` re-runs a subset).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import emit_result, run_child  # noqa: E402


def child(target: str, tokens: int, decode_tokens: int) -> None:
    import torch

    torch.set_num_threads(2)
    from edgeweave.compress.evaluate import perplexity
    from edgeweave.runtime.engine import LocalEngine
    from edgeweave.runtime.generate import SamplingParams, generate

    if target == "fp32":
        from edgeweave.models import load
        from edgeweave.runtime.fast import accelerate_decode

        lm = load()
        accelerate_decode(lm.model)
    else:
        from edgeweave.compress import load_artifact

        lm = load_artifact(target)
    engine = LocalEngine(lm.model, max_len=256)
    prompt = "Explain what an IoT gateway does in a smart home."
    params = SamplingParams(max_tokens=decode_tokens, ignore_eos=True)
    generate(engine, lm.tokenizer, prompt, SamplingParams(max_tokens=4), chat=True)  # warm-up
    r = generate(engine, lm.tokenizer, prompt, params, chat=True)
    sanity = generate(engine, lm.tokenizer, "What is the capital of France?",
                      SamplingParams(max_tokens=16), chat=True).text
    out = {"decode_tps": r.metrics.decode_tps, "peak_rss_mb": r.metrics.peak_rss_mb,
           "sanity": sanity.strip()}
    for corpus in ("wikipedia", "shakespeare"):
        out[f"ppl_{corpus}"] = perplexity(lm, corpus, tokens=tokens, seq_len=256, seed=0)
    emit_result(out)


def recipes(distill_steps: int) -> dict:
    from edgeweave.compress import (
        ASVD,
        GPTQ,
        RTN,
        SVD,
        ChannelPrune,
        Distill,
        Magnitude,
        Pipeline,
        SmoothQuant,
        SparseGPT,
        Wanda,
    )

    # target-relevant recipes first: the table is written after every row
    return {
        "fp32": None,
        "rtn-int8": RTN(bits=8),
        "rtn-int4-g128": RTN(bits=4, group_size=128, pad=True),
        "gptq-int4-g128": GPTQ(bits=4, group_size=128, pad=True),
        "magnitude-50": Magnitude(0.5),
        "wanda-50": Wanda(0.5),
        "sparsegpt-50": SparseGPT(0.5),
        "distill18-kd": Distill(student_layers=18, steps=distill_steps, batch=4, loss="kd"),
        "distill18-ce": Distill(student_layers=18, steps=distill_steps, batch=4, loss="ce"),
        "smoothquant-w8a8": SmoothQuant(alpha=0.75),
        "rtn-int4-g64": RTN(bits=4, group_size=64),
        "gptq-int4-g64": GPTQ(bits=4, group_size=64),
        "rtn-int4-g32": RTN(bits=4, group_size=32),
        "gptq-int3-g64": GPTQ(bits=3, group_size=64),
        "wanda-2:4": Wanda(0.5, "2:4"),
        "channels-25": ChannelPrune(0.25),
        "svd-e0.95": SVD(energy=0.95),
        "asvd-e0.95": ASVD(energy=0.95),
        "wanda-50+rtn-int4": Pipeline((Wanda(0.5), RTN(bits=4, group_size=128, pad=True))),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--tokens", type=int, default=2048, help="perplexity tokens per corpus")
    ap.add_argument("--decode-tokens", type=int, default=48)
    ap.add_argument("--calib", type=int, default=16, help="calibration windows of 256 tokens")
    ap.add_argument("--distill-steps", type=int, default=60)
    ap.add_argument("--only", default="", help="comma-separated recipe names")
    ap.add_argument("--out", default=str(ROOT / "results" / "compress.json"))
    ap.add_argument("--stop-at", default=None,
                    help="HH:MM (UTC): start no new recipe after this time (shared machines)")
    a = ap.parse_args()
    if a.child:
        child(a.child, a.tokens, a.decode_tokens)
        return

    import torch

    torch.set_num_threads(2)
    from edgeweave.compress import Calibration, compress, wiki_calibration
    from edgeweave.data.text import wiki_texts
    from edgeweave.models import load
    from edgeweave.paths import home

    out_path = Path(a.out)
    results = json.loads(out_path.read_text()) if out_path.is_file() else {"rows": {}}
    lm = load()
    calib = wiki_calibration(lm.tokenizer, a.calib, 256)
    train = Calibration.from_texts(lm.tokenizer, wiki_texts("train"), 4 * a.distill_steps, 128,
                                   "wikipedia summaries, train split (distillation corpus)")
    work = home() / "bench-compress"
    todo = recipes(a.distill_steps)
    if a.only:
        todo = {k: v for k, v in todo.items() if k in a.only.split(",")}
    for name, recipe in todo.items():
        if a.stop_at and time.strftime("%H:%M", time.gmtime()) >= a.stop_at:
            print(f"{name}: skipped (--stop-at {a.stop_at})", flush=True)
            continue
        row: dict = {"recipe": recipe.label() if recipe else "reference (fp32 weights)"}
        target = "fp32"
        if recipe is not None:
            data = train if recipe.method == "distill" else calib
            t0 = time.perf_counter()
            try:
                art = compress(lm, recipe, calib=data, out=work / name)
            except Exception as e:  # record and go on: one broken recipe must not stop the table
                import traceback

                results["rows"][name] = {"recipe": row["recipe"], "error": traceback.format_exc()}
                print(f"{name}: FAILED {e}", flush=True)
                continue
            row["compress_s"] = round(time.perf_counter() - t0, 1)
            s = art.manifest["stats"]
            row |= {"size_mb": s["size_bytes"] / 1e6, "size_vs_fp16": s["size_vs_fp16"],
                    "bits_per_weight": s["bits_per_weight"], "runtime": art.manifest["runtime"],
                    "blocks": s["blocks"], "notes": art.manifest["notes"]}
            target = str(art.path)
            del art
        else:
            row |= {"compress_s": 0.0, "size_mb": 4 * lm.config.num_params() / 1e6,
                    "size_vs_fp16": 2.0, "bits_per_weight": 32.0, "blocks": lm.config.num_layers,
                    "runtime": "fp32 with accelerate_decode (numpy GEMV)"}
        got, proc = run_child([__file__, "--child", target, "--tokens", str(a.tokens),
                               "--decode-tokens", str(a.decode_tokens)], cwd=ROOT)
        if got is None:
            row["error"] = proc.stderr[-2000:]
        else:
            row |= got
        results["rows"][name] = row
        print(f"{name:20s} " + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else ""
                                         for k, v in row.items()), flush=True)
        results["setup"] = {"tokens_per_corpus": a.tokens, "seq_len": 256,
                            "calibration": calib.description, "decode_tokens": a.decode_tokens,
                            "distill_steps": a.distill_steps, "threads": 2,
                            "fp16_size_mb": 2 * lm.config.num_params() / 1e6}
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=2, default=str))
    report(results)
    out_path.write_text(json.dumps(results, indent=2, default=str))


def report(results: dict) -> None:
    rows = results["rows"]
    print(f"\n{'recipe':20s} {'MB':>7s} {'%fp16':>6s} {'RSS MB':>7s} {'tok/s':>6s} "
          f"{'wiki':>7s} {'shksp':>7s} {'comp s':>7s}")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:20s} ERROR {r['error'][-200:]}")
            continue
        print(f"{name:20s} {r['size_mb']:7.1f} {100 * r['size_vs_fp16'] / 1:6.0f} "
              f"{r['peak_rss_mb']:7.0f} {r['decode_tps']:6.1f} {r['ppl_wikipedia']:7.2f} "
              f"{r['ppl_shakespeare']:7.2f} {r['compress_s']:7.1f}")
    targets = check_targets(rows)
    results["targets"] = targets
    print("\ntargets:")
    for k, v in targets.items():
        print(f"  {'MET ' if v['met'] else 'MISS'} {k}: {v['detail']}")


def check_targets(rows: dict) -> dict:
    def ok(*names: str) -> bool:
        return all(n in rows and "error" not in rows[n] for n in names)

    t: dict = {}
    if ok("fp32", "rtn-int8"):
        ref, q = rows["fp32"]["ppl_wikipedia"], rows["rtn-int8"]["ppl_wikipedia"]
        t["int8 ppl within 1% and size <= 55% of fp16"] = {
            "met": q <= 1.01 * ref and rows["rtn-int8"]["size_vs_fp16"] <= 0.55,
            "detail": f"wiki ppl {q:.3f} vs {ref:.3f} ({100 * (q / ref - 1):+.2f}%), size "
                      f"{100 * rows['rtn-int8']['size_vs_fp16']:.1f}% of fp16"}
    if ok("fp32", "rtn-int4-g128", "gptq-int4-g128"):
        ref = rows["fp32"]["ppl_wikipedia"]
        d_rtn = rows["rtn-int4-g128"]["ppl_wikipedia"] - ref
        d_gptq = rows["gptq-int4-g128"]["ppl_wikipedia"] - ref
        t["int4 g128: GPTQ increase <= 60% of RTN's"] = {
            "met": d_gptq <= 0.6 * d_rtn,
            "detail": f"GPTQ +{d_gptq:.2f} vs RTN +{d_rtn:.2f} ({100 * d_gptq / d_rtn:.0f}%)"}
    if ok("magnitude-50", "wanda-50", "sparsegpt-50"):
        m = rows["magnitude-50"]["ppl_wikipedia"]
        w, s = rows["wanda-50"]["ppl_wikipedia"], rows["sparsegpt-50"]["ppl_wikipedia"]
        t["50% unstructured: Wanda and SparseGPT below magnitude"] = {
            "met": w < m and s < m, "detail": f"wanda {w:.1f}, sparsegpt {s:.1f}, magnitude {m:.1f}"}
    if ok("fp32", "gptq-int4-g128", "rtn-int8"):
        f = rows["fp32"]["decode_tps"]
        i4, i8 = rows["gptq-int4-g128"], rows["rtn-int8"]
        t["int4 <= 30% of fp16; int4/int8 decode faster than fp32"] = {
            "met": i4["size_vs_fp16"] <= 0.30 and i4["decode_tps"] > f and i8["decode_tps"] > f,
            "detail": f"int4 size {100 * i4['size_vs_fp16']:.1f}% of fp16; decode tok/s fp32 "
                      f"{f:.1f}, int8 {i8['decode_tps']:.1f}, int4 {i4['decode_tps']:.1f}"}
    if ok("distill18-kd", "distill18-ce"):
        kd, ce = rows["distill18-kd"]["ppl_wikipedia"], rows["distill18-ce"]["ppl_wikipedia"]
        t["distilled student (18/30 blocks) beats the same student without KD"] = {
            "met": kd < ce, "detail": f"KD {kd:.1f} vs CE {ce:.1f} wiki ppl "
                                      f"(Shakespeare {rows['distill18-kd']['ppl_shakespeare']:.1f}"
                                      f" vs {rows['distill18-ce']['ppl_shakespeare']:.1f})"}
    return t


if __name__ == "__main__":
    main()
