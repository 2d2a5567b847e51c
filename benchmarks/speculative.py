"""Speculative decoding across device and edge, on the bundled model (issue 21).

The edge is one ``edgeweave node`` process (started as the README says) holding the whole
model in ``--target-variant`` (fp32 by default: the full model where the compute is); the
entry device is ``edgeweave serve --plan plan.json --node edge=ADDR`` dialing the node
through a :class:`~edgeweave.runtime.transport.delay_proxy.NodeDelayProxy` that adds a one-way
delay (0, 5, 10, 20 ms) to each direction of the link. At every delay, one server per row,
all running at once:

* **plain**: ``serve`` without a draft (one round trip per token);
* **draft KIND**: ``serve --draft KIND`` (adaptive ``k`` unless ``--draft-k``): the draft
  runs in the serving process, the node verifies ``k + 1`` tokens per round trip.

Their streams alternate, ``--rounds`` rounds with the order rotating, and a row's ratio to
plain is the median of same-round ratios (this shared VM's speed drifts between minutes).
Per row, through the official ``openai`` client (greedy, ``--tokens`` new tokens): decode
tok/s as the client sees it (median of the rounds), the ratio to plain at the same delay,
the acceptance rate and tokens per verify pass (from the response's ``edgeweave`` field),
and whether the text is the plain row's. With ``--concurrent K`` (default 4; 0: off) each
row also runs K streams at once: their aggregate tok/s (streams that meet step plain in one
batch, so a draft must not cost batched serving its throughput). The anchor is onnxruntime-
genai on the same fp32 weights in this process (no network): the speed of one local device.
Targets: >= 1.8x plain at 10 ms one-way with identical greedy text; never below 0.95x plain
at 0 ms.

    flock /tmp/edgeweave-cpu.lock .venv/bin/python benchmarks/speculative.py

Prints a table and writes results/speculative.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

from _common import print_table, write_json  # noqa: E402
from serve import EDGEWEAVE, MODEL, Served, stream_once  # noqa: E402

from edgeweave.runtime.deployment import stop_processes  # noqa: E402
from edgeweave.runtime.launch import wait_ready  # noqa: E402
from edgeweave.runtime.transport.delay_proxy import LinkShape, NodeDelayProxy  # noqa: E402
from edgeweave.types import Plan  # noqa: E402

QUESTION = ("You are the assistant of a smart home. The living room sensor reports 27.5 C and "
            "62% humidity, the window is closed and nobody is home. Explain what the heating, "
            "ventilation and blinds should do for the next hour, step by step.")


def text_of(url: str, n: int) -> str:
    import openai

    c = openai.OpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=600)
    r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                  max_tokens=n, temperature=0, extra_body={"ignore_eos": True})
    return r.choices[0].message.content or ""


def interleaved(servers: dict[str | None, Served], n: int, rounds: int
                ) -> dict[str | None, dict[str, Any]]:
    """``rounds`` rounds of one stream per server, the order rotating each round: this VM's
    speed drifts 20-30 % between minutes, so a row's ratio to plain is the median of
    same-round ratios, not a ratio of runs minutes apart."""
    names = list(servers)
    for srv in servers.values():  # warm-up: arenas, first-run allocations, the draft's too
        stream_once(srv.url, "What should a thermostat do when the window is open?", 8)
    runs: dict[str | None, list[dict[str, Any]]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            runs[name].append(stream_once(servers[name].url, QUESTION, n))
    out = {}
    for name in names:
        tps = [x["decode_tps"] for x in runs[name]]
        ratios = [x["decode_tps"] / p["decode_tps"] for x, p in zip(runs[name], runs[None],
                                                                     strict=True)]
        ew = runs[name][-1]["edgeweave"]  # what the draft did, as the last stream says
        out[name] = {"decode_tps": statistics.median(tps), "all_tps": tps,
                     "ratio_to_plain": statistics.median(ratios), "ratios": ratios,
                     "ttft_s": statistics.median(x["ttft_s"] for x in runs[name]),
                     "acceptance": ew.get("spec_acceptance"),
                     "per_pass": ew.get("spec_tokens_per_round"), "k": ew.get("spec_k"),
                     "plain_steps": ew.get("spec_plain_steps"), "edgeweave": ew}
    return out


def together(url: str, n: int, k: int) -> float:
    """Aggregate decode tok/s of ``k`` concurrent streams of ``n`` tokens."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.perf_counter()
    with ThreadPoolExecutor(k) as pool:
        res = list(pool.map(lambda i: stream_once(url, f"{QUESTION} (room {i + 1})", n),
                            range(k)))
    return sum(r["tokens"] for r in res) / (time.perf_counter() - t0)


def genai_anchor(n: int, threads: int) -> float:
    from serve import _genai

    return float(_genai("fp32", n, 2, threads)["decode_tps"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=5,
                    help="streams per row, the rows alternating (ratios: median of rounds)")
    ap.add_argument("--delays", default="0,5,10,20", help="one-way delays in ms")
    ap.add_argument("--target-variant", default="fp32")
    ap.add_argument("--drafts", default="int8,int4,early-exit:10",
                    help="comma-separated --draft values (a distilled student's folder too)")
    ap.add_argument("--draft-k", type=int, default=0)
    ap.add_argument("--concurrent", type=int, default=4, help="streams at once (0: skip)")
    args = ap.parse_args()
    delays = [float(d) for d in args.delays.split(",")]
    drafts = [d for d in args.drafts.split(",") if d]

    tmp = Path(tempfile.mkdtemp(prefix="edgeweave-spec-"))
    plan = Plan.split(30, [], ["edge"], variant=args.target_variant, codec="fp16")
    (tmp / "plan.json").write_text(json.dumps({"plan": plan.to_dict()}))
    log = tmp / "edge.log"
    # the README's node command: the node picks its own threads and wait policy
    node = subprocess.Popen([*EDGEWEAVE, "node", "--stage", "0:30", "--variant",
                             args.target_variant], stdout=subprocess.PIPE, stderr=log.open("wb"))
    rows, out = [], {"delays_ms": delays, "rows": []}
    try:
        address = wait_ready(node, log, 900)
        for delay in delays:
            with NodeDelayProxy(address, LinkShape(delay_ms=delay)) as proxy:
                base = ["--plan", str(tmp / "plan.json"), "--node", f"edge={proxy.address}"]
                # every row's server at once, so that their streams can alternate
                servers: dict[str | None, Served] = {}
                try:
                    for draft in [None, *drafts]:
                        servers[draft] = Served(base + ([] if draft is None else [
                            "--draft", draft, "--draft-k", str(args.draft_k)]))
                    speed = interleaved(servers, args.tokens, args.rounds)
                    res = {d: {**speed[d], "text": text_of(srv.url, args.tokens),
                               "aggregate_tps": together(srv.url, args.tokens, args.concurrent)
                               if args.concurrent > 1 else None}
                           for d, srv in servers.items()}
                finally:
                    for srv in servers.values():
                        srv.close()
                plain = res[None]
                plain_text = plain["text"]
                for draft, r in res.items():
                    agg, plain_agg = r["aggregate_tps"], plain["aggregate_tps"]
                    agg_ratio = agg / plain_agg if agg and plain_agg else None
                    same = r.pop("text") == plain_text
                    rows.append([f"{delay:g}", draft or "plain", round(r["decode_tps"], 1),
                                 round(r["ratio_to_plain"], 2), _fmt(r["acceptance"]),
                                 _fmt(r["per_pass"]), _fmt(r["k"]), "yes" if same else "NO",
                                 _fmt(agg), _fmt(agg_ratio)])
                    out["rows"].append({"delay_ms": delay, "draft": draft, **r,
                                        "same_text": same, "concurrent": args.concurrent,
                                        "aggregate_ratio_to_plain": agg_ratio})
    finally:
        stop_processes([node])
    threads = len(os.sched_getaffinity(0))
    anchor = genai_anchor(args.tokens, threads)
    out["anchor_genai_fp32_tps"] = anchor
    print_table(f"speculative decoding, target {args.target_variant} on an edge node, "
                f"{args.tokens} tokens, x plain = median of {args.rounds} same-round ratios "
                f"(onnxruntime-genai fp32, one process: {anchor:.1f} tok/s)",
                ["one-way ms", "draft", "tok/s", "x plain", "acceptance", "tok/pass", "k",
                 "same text", (f"{args.concurrent} at once tok/s" if args.concurrent
                               else "at once: skipped"), "agg x plain"], rows)
    at10 = [r for r in out["rows"] if r["delay_ms"] == 10 and r["draft"]]
    at0 = [r for r in out["rows"] if r["delay_ms"] == 0 and r["draft"]]
    if at10:
        out["best_at_10ms"] = max(r["ratio_to_plain"] for r in at10)
    if at0:
        out["worst_at_0ms"] = min(r["ratio_to_plain"] for r in at0)
    out["median_plain_tps"] = statistics.median(r["decode_tps"] for r in out["rows"]
                                                if r["draft"] is None)
    write_json("speculative", out)


def _fmt(v: Any) -> Any:
    return "-" if v is None else round(float(v), 2)


if __name__ == "__main__":
    main()
