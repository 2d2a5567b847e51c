"""Decode speed of our engine vs Hugging Face ``generate()`` on the bundled model (fp32).

Same process, same weights, batch 1, a 64-token prompt, 128 new greedy tokens; rounds are
interleaved (HF, ours, HF, ours, ...) and the best round of each is kept, so background load
hurts both alike. Prints a table and writes results/decode.json.

    .venv/bin/python benchmarks/decode.py [--rounds 3] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402
from _common import print_table, write_json  # noqa: E402

from edgeweave.models import DEFAULT_MODEL, load  # noqa: E402
from edgeweave.models.catalog import cache_folder  # noqa: E402
from edgeweave.runtime.engine import LocalEngine  # noqa: E402
from edgeweave.runtime.fast import accelerate_decode  # noqa: E402
from edgeweave.runtime.generate import SamplingParams, generate  # noqa: E402

PROMPT = ("The gateway in the kitchen collects temperature, humidity, light and CO2 readings "
          "from four battery powered sensors every thirty seconds and forwards a summary to the "
          "edge server, which decides whether the ventilation should run. ")


def prompt_ids(tokenizer, n: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < n:
        ids += tokenizer.encode(PROMPT)
    return ids[:n]


def run_hf(model, ids: list[int], new: int) -> dict:
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    clock = Clock()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=new, do_sample=False,
                             streamer=clock, pad_token_id=0)
    t_end = time.perf_counter()
    first = clock.times[1]  # times[0] is the prompt being echoed to the streamer
    return {"tokens": out[0, len(ids):].tolist(), "ttft_s": first - t0,
            "decode_tps": (new - 1) / (t_end - first)}


def run_ours(engine, tokenizer, ids: list[int], new: int) -> dict:
    r = generate(engine, tokenizer, ids, SamplingParams(max_tokens=new, ignore_eos=True))
    return {"tokens": r.token_ids, "ttft_s": r.metrics.ttft_s, "decode_tps": r.metrics.decode_tps,
            "peak_rss_mb": r.metrics.peak_rss_mb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM

    lm = load(DEFAULT_MODEL)
    hf = AutoModelForCausalLM.from_pretrained(str(cache_folder(DEFAULT_MODEL)), dtype=torch.float32)
    hf.eval()
    # Like our ignore_eos: HF's min_new_tokens would *mask* EOS instead, changing the tokens.
    hf.generation_config.eos_token_id = None
    ids = prompt_ids(lm.tokenizer, args.prompt_tokens)

    accelerate_decode(lm.model)
    ours = LocalEngine(lm.model, max_len=512)
    runs: dict[str, list[dict]] = {"hf_generate": [], "edgeweave": []}
    for _ in range(args.rounds):
        runs["hf_generate"].append(run_hf(hf, ids, args.new_tokens))
        runs["edgeweave"].append(run_ours(ours, lm.tokenizer, ids, args.new_tokens))

    best = {k: max(v, key=lambda r: r["decode_tps"]) for k, v in runs.items()}
    ref = best["hf_generate"]
    same = sum(a == b for a, b in zip(best["edgeweave"]["tokens"], ref["tokens"], strict=False))
    rows = []
    for name, r in best.items():
        rows.append([name, r["decode_tps"], r["ttft_s"] * 1000, r["decode_tps"] / ref["decode_tps"],
                     f"{sum(a == b for a, b in zip(r['tokens'], ref['tokens'], strict=False))}"
                     f"/{len(ref['tokens'])}"])
    print_table(f"Decode, fp32, batch 1, {args.prompt_tokens}-token prompt, {args.new_tokens} new "
                f"tokens, best of {args.rounds} interleaved rounds",
                ["engine", "decode tok/s", "TTFT ms", "x HF", "greedy tokens = HF"], rows)
    speedup = best["edgeweave"]["decode_tps"] / ref["decode_tps"]
    print(f"\ntarget >= 1.2x HF decode tok/s: {speedup:.2f}x -> {'met' if speedup >= 1.2 else 'NOT met'}")
    from serve import anchor_line, genai_anchor

    anchor = genai_anchor("fp32", args.new_tokens)  # the same fp32 weights
    print(anchor_line(anchor))
    write_json("decode", {
        "model": DEFAULT_MODEL, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
        "genai_anchor": anchor,
        "rounds": {k: [{kk: vv for kk, vv in r.items() if kk != "tokens"} for r in v]
                   for k, v in runs.items()},
        "best": {k: {kk: vv for kk, vv in r.items() if kk != "tokens"} for k, r in best.items()},
        "speedup_decode": speedup, "identical_tokens": same, "target": 1.2,
    })


if __name__ == "__main__":
    main()
