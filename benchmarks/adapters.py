"""LoRA adapters served unmerged: what a request for an adapter costs against the base.

``edgeweave serve --adapter home-a=DIR --adapter home-b=DIR`` is started as a user would
(its defaults: ONNX Runtime int4; then ``--backend torch --variant fp32``) on the bundled
SmolLM2 with two adapters saved by ``save_adapter`` (random non-zero factors: rank 8 on
q/v, what ``edgeweave finetune`` trains by default, and rank 16 on all seven linears, the
worst case). Each round asks the base and both adapters for ``--new-tokens`` greedy tokens
(EOS ignored) through the official ``openai`` client and reads the server's own
``decode_tok_s``; a ratio is the median over rounds of adapter / base in the same round.
Memory: the server's RSS after the requests, against the same server started without
adapters (the ONNX engine loads a second graph, the LoRA twin, when an adapter is added).
The raw engines (no server, one process, rounds interleaved) separate the adapters' cost from
this VM's drift between server processes: a base session before any adapter was added, a
base session after, and a session of each adapter. "answers differ" compares the greedy
texts, which can coincide for these weak random adapters; "logit diff" is the largest
difference of the first-token logits from the base's, which cannot.

    flock /tmp/edgeweave-cpu.lock .venv/bin/python benchmarks/adapters.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

from _common import print_table, write_json  # noqa: E402
from serve import MODEL, QUESTION, Served, anchor_line, genai_anchor, rss_mb  # noqa: E402

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_adapters(root: Path) -> dict[str, Path]:
    import torch

    from edgeweave.finetune.adapter import save_adapter
    from edgeweave.finetune.config import LoRAConfig
    from edgeweave.finetune.lora import apply_lora
    from edgeweave.models import catalog

    out = {}
    for seed, (name, lora) in enumerate({
            "home-a": LoRAConfig(rank=8, alpha=16),
            "home-b": LoRAConfig(rank=16, alpha=32, target_modules=ALL)}.items()):
        lm = catalog.load(MODEL)
        apply_lora(lm.model, lora)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in lm.model.named_parameters():
                if ".lora_B." in n:  # PEFT starts B at zero: make the adapter do something
                    p.copy_(torch.randn(p.shape, generator=g) * 0.01)
        out[name] = save_adapter(root / name, lm.model, lora, base=lm.name,
                                 base_fingerprint=lm.fingerprint)
    return out


def ask(url: str, model: str, n: int) -> dict:
    import openai

    c = openai.OpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=600)
    r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}],
                                  max_tokens=n, temperature=0, extra_body={"ignore_eos": True})
    ew = (r.model_extra or {})["edgeweave"]
    return {"decode_tok_s": ew["decode_tok_s"], "text": r.choices[0].message.content}


def measure(extra: list[str], adapters: dict[str, Path], rounds: int, n: int) -> dict:
    models = [MODEL, *adapters]
    flags = [f for name, d in adapters.items() for f in ("--adapter", f"{name}={d}")]
    server = Served([*extra, *flags])
    try:
        per = {m: [] for m in models}
        texts = {}
        for _ in range(rounds):
            for m in models:
                r = ask(server.url, m, n)
                per[m].append(r["decode_tok_s"])
                texts.setdefault(m, r["text"])
        rss = rss_mb(server.proc.pid)
    finally:
        server.close()
    plain = Served(extra)  # the same server without adapters: its memory and speed
    try:
        base_alone = [ask(plain.url, MODEL, n)["decode_tok_s"] for _ in range(rounds)]
        rss_plain = rss_mb(plain.proc.pid)
    finally:
        plain.close()
    ratios = {m: statistics.median(a / b for a, b in zip(per[m], per[MODEL], strict=True))
              for m in adapters}
    return {"tok_s": {m: statistics.median(v) for m, v in per.items()},
            "base_without_adapters_tok_s": statistics.median(base_alone),
            "ratio_to_base": ratios, "texts_differ": len(set(texts.values())) == len(texts),
            "rss_mb": rss[0], "rss_mb_without_adapters": rss_plain[0], "ready_s": server.ready_s}


def raw_engine(choice, adapters: dict[str, Path], rounds: int, n: int) -> dict:
    """Decode tok/s of one whole-model engine: base before any adapter, then base and each
    adapter after adding them (same process, rounds interleaved)."""
    import numpy as np

    from edgeweave.runtime.adapters import AdapterSpec
    from edgeweave.runtime.generate import SamplingParams, generate
    from edgeweave.serve.backend import LocalSessions

    b = LocalSessions.load(MODEL, choice)
    ids = b.tokenizer.encode_chat([{"role": "user", "content": QUESTION}])
    params = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)

    def rate(adapter: str | None) -> float:
        return generate(b.new_session(len(ids) + n, adapter), b.tokenizer, ids,
                        params).metrics.decode_tps

    before = [rate(None) for _ in range(rounds)]
    b.add_adapters([AdapterSpec(k, d) for k, d in adapters.items()])
    per: dict[str, list[float]] = {"base": [], **{k: [] for k in adapters}}
    for _ in range(rounds):
        for k in per:
            per[k].append(rate(None if k == "base" else k))
    first = {k: b.new_session(len(ids) + 1, None if k == "base" else k).prefill(ids)
             for k in per}
    return {"base_before_adapters_tok_s": statistics.median(before),
            "tok_s": {k: statistics.median(v) for k, v in per.items()},
            "logit_diff": {k: float(np.abs(first[k] - first["base"]).max()) for k in adapters}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--raw-only", action="store_true", help="Only the raw engines.")
    args = ap.parse_args()
    from edgeweave.runtime.local import EngineChoice

    engines = (("onnx int4 (default)", [], EngineChoice("onnx", "int4")),
               ("torch fp32", ["--backend", "torch", "--variant", "fp32"],
                EngineChoice("torch", "fp32")))
    with tempfile.TemporaryDirectory(prefix="edgeweave-adapters-") as tmp:
        adapters = make_adapters(Path(tmp))
        raw = {label: raw_engine(c, adapters, args.rounds, args.new_tokens)
               for label, _, c in engines}
        res = {} if args.raw_only else {label: measure(extra, adapters, args.rounds,
                                                      args.new_tokens)
                                        for label, extra, _ in engines}
    print_table(f"Raw engines, {MODEL}, {args.new_tokens} tokens, decode tok/s (one process, "
                "median of rounds)",
                ["engine", "base, no adapter added", "base, adapters added", "home-a r8 q,v",
                 "home-b r16 all", "first-token logit diff a / b"],
                [[label, f"{r['base_before_adapters_tok_s']:.1f}", f"{r['tok_s']['base']:.1f}",
                  f"{r['tok_s']['home-a']:.1f}", f"{r['tok_s']['home-b']:.1f}",
                  f"{r['logit_diff']['home-a']:.2f} / {r['logit_diff']['home-b']:.2f}"]
                 for label, r in raw.items()])
    if args.raw_only:
        write_json("adapters-raw", {"rounds": args.rounds, "new_tokens": args.new_tokens,
                                    "raw": raw})
        return
    rows = [[label, f"{r['tok_s'][MODEL]:.1f}", f"{r['base_without_adapters_tok_s']:.1f}",
             f"{r['tok_s']['home-a']:.1f} ({r['ratio_to_base']['home-a']:.2f}x)",
             f"{r['tok_s']['home-b']:.1f} ({r['ratio_to_base']['home-b']:.2f}x)",
             r["texts_differ"], f"{r['rss_mb']:.0f} / {r['rss_mb_without_adapters']:.0f}"]
            for label, r in res.items()]
    print_table(f"Adapters served unmerged, {MODEL}, {args.new_tokens} tokens, decode tok/s "
                "(median of rounds; ratio = adapter / base in the same round)",
                ["engine", "base", "base, no adapters loaded", "home-a r8 q,v", "home-b r16 all",
                 "answers differ", "RSS MB with / without"], rows)
    anchor = genai_anchor("int4", args.new_tokens)  # the base model, no adapter
    print(anchor_line(anchor))
    write_json("adapters", {"rounds": args.rounds, "new_tokens": args.new_tokens,
                            "results": res, "raw": raw, "genai_anchor": anchor})


if __name__ == "__main__":
    main()
