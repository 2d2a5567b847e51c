"""Structured output through `edgeweave serve` (its defaults) and the official `openai` client.

* ``--requests`` (200) JSON-schema requests (IoT actuation commands, sampled at temperature
  0.8 with a seed each): how many answers parse and validate against their schema;
* decode tok/s of constrained against unconstrained answers from the same server in the
  same run (the server's own ``decode_tok_s``): the overhead of masking (target <= 10 %);
* the grammar libraries on the same token sequences of the bundled tokenizer: mask time per
  token of llguidance (what edgeweave uses) and of xgrammar when it is installed (it needs
  torch, transformers and triton, which is why it is not our choice).

    flock /tmp/edgeweave-cpu.lock .venv/bin/python benchmarks/structured.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

from _common import print_table, write_json  # noqa: E402
from serve import MODEL, Served, anchor_line, genai_anchor  # noqa: E402

SCHEMAS = [
    ({"type": "object", "properties": {"device": {"enum": ["heater", "fan", "blinds", "light"]},
                                       "action": {"enum": ["on", "off"]},
                                       "level": {"type": "integer", "minimum": 0,
                                                 "maximum": 10}},
      "required": ["device", "action"], "additionalProperties": False},
     "It is {t} C in the living room and the window is closed. Which device should change, "
     "and how? Answer as JSON."),
    ({"type": "object", "properties": {"room": {"enum": ["kitchen", "bedroom", "hall"]},
                                       "occupied": {"type": "boolean"},
                                       "confidence": {"type": "number", "minimum": 0,
                                                      "maximum": 1}},
      "required": ["room", "occupied", "confidence"], "additionalProperties": False},
     "The kitchen sensor reads CO2 {t}0 ppm and motion twice in the last minute. Report the "
     "room's state as JSON."),
]


def run_requests(url: str, n: int) -> dict:
    import jsonschema
    import openai

    c = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)
    valid, rates, bad = 0, [], []
    for i in range(n):
        schema, prompt = SCHEMAS[i % len(SCHEMAS)]
        r = c.chat.completions.create(
            model=MODEL, temperature=0.8, seed=i, max_tokens=96,
            messages=[{"role": "user", "content": prompt.format(t=18 + i % 15)}],
            response_format={"type": "json_schema",
                             "json_schema": {"name": "cmd", "schema": schema, "strict": True}})
        text = r.choices[0].message.content
        try:
            jsonschema.validate(json.loads(text), schema)
            valid += 1
        except (ValueError, jsonschema.ValidationError):
            bad.append(text)
        rate = (r.model_extra or {}).get("edgeweave", {}).get("decode_tok_s")
        if rate:
            rates.append(rate)
    return {"requests": n, "valid": valid, "invalid_examples": bad[:3],
            "decode_tps_median": statistics.median(rates) if rates else None}


def unconstrained(url: str, n: int) -> float:
    import openai

    c = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)
    rates = []
    for i in range(n):
        r = c.chat.completions.create(
            model=MODEL, temperature=0.8, seed=i, max_tokens=24,
            messages=[{"role": "user", "content": SCHEMAS[0][1].format(t=20)}])
        rates.append(r.model_extra["edgeweave"]["decode_tok_s"])
    return statistics.median(rates)


def mask_times(tokens_per_run: int = 48) -> dict:
    """Per-token mask + advance time of each library on the same accepted token sequence."""
    import numpy as np

    from edgeweave.runtime.constraints import Matcher, OutputFormat
    from edgeweave.runtime.local import tokenizer_for

    tok = tokenizer_for(MODEL)
    schema = SCHEMAS[0][0]
    fmt = OutputFormat.json_schema(schema)
    rng = np.random.default_rng(0)
    m = Matcher(fmt, tok)
    seq, t_ll = [], []
    noise = rng.standard_normal((tokens_per_run, 49152)).astype(np.float32)
    while len(seq) < tokens_per_run and not m.done:
        t0 = time.perf_counter()  # what one generation step adds: mask, then advance
        z = m.mask(noise[len(seq)])
        t = int(np.argmax(z))
        m.accept(t)
        t_ll.append(time.perf_counter() - t0)
        seq.append(t)
    out = {"llguidance_us_per_token": 1e6 * statistics.median(t_ll), "tokens": len(seq)}
    try:
        import xgrammar as xgr
        from transformers import PreTrainedTokenizerFast
    except ImportError:
        out["xgrammar"] = "not installed (needs torch, transformers, triton)"
        return out
    from edgeweave.models.catalog import resolve

    hf = PreTrainedTokenizerFast(tokenizer_file=str(resolve(MODEL)[1] / "tokenizer.json"))
    info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=49152)
    cg = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(schema), any_whitespace=False)
    xm = xgr.GrammarMatcher(cg)
    bitmask = xgr.allocate_token_bitmask(1, 49152)
    t_x = []
    import torch

    for i, t in enumerate(seq):
        logits = torch.from_numpy(noise[i].copy())
        t0 = time.perf_counter()  # the same work: mask the logits, then advance
        xm.fill_next_token_bitmask(bitmask)
        xgr.apply_token_bitmask_inplace(logits, bitmask[0])
        ok = xm.accept_token(t)
        t_x.append(time.perf_counter() - t0)
        if not ok:
            break
    out["xgrammar_us_per_token"] = 1e6 * statistics.median(t_x)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    a = ap.parse_args()
    srv = Served()
    try:
        free = unconstrained(srv.url, 10)
        res = run_requests(srv.url, a.requests)
    finally:
        srv.close()
    masks = mask_times()
    overhead = (1 - res["decode_tps_median"] / free) if res["decode_tps_median"] else None
    print_table(f"Structured output through edgeweave serve ({MODEL}, defaults)",
                ["requests", "valid JSON for the schema", "constrained tok/s",
                 "unconstrained tok/s", "overhead"],
                [[res["requests"], res["valid"], res["decode_tps_median"], free,
                  "-" if overhead is None else f"{100 * overhead:.1f} %"]])
    print_table("Mask + advance per token, same tokens", ["library", "us/token"],
                [["llguidance", masks["llguidance_us_per_token"]],
                 ["xgrammar", masks.get("xgrammar_us_per_token", masks.get("xgrammar"))]])
    anchor = genai_anchor("int4", 64)  # no structured output: the engine's own pace
    print(anchor_line(anchor))
    write_json("structured", {"model": MODEL, **res, "unconstrained_decode_tps": free,
                              "overhead": overhead, "mask_times": masks, "genai_anchor": anchor})


if __name__ == "__main__":
    main()
