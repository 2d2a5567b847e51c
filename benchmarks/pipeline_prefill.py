"""Pipelined prefill (issue 21 item 5): TTFT of a 3-stage plan of the bundled model
(SmolLM2-135M, 30 blocks, ONNX Runtime, ``--variant`` int4 by default) over three local
``edgeweave node`` processes (``launch``: real processes, gRPC on loopback) on a ~512-token
prompt, sequential prefill (``pipeline_chunk=0``: the whole prompt through stage 0, then
stage 1, ...) against pipelined (``pipeline_chunk`` tokens per chunk, the stages at once).

TTFT here is ``Session.prefill``: OPEN at every stage plus the prompt through the plan, up
to the last stage's logits. Rounds alternate the configurations, so background load hurts
all alike; the median per configuration is reported. Per-stage figures come from the
coordinator's own requests (each FORWARD answer carries the node's compute time): compute
per stage per prefill, and for the pipelined run the time the stages overlapped.
Target: pipelined <= 0.6x sequential. The ideal for ``k`` equal chunks over ``S`` equal
stages is ``(k + S - 1) / (k S)`` of sequential (0.42x for 8 chunks, 3 stages), but only on
as many free cores as stages: the nodes' compute can overlap at most as far as the host's
cores allow. Prints a table, writes ``results/pipeline_prefill.json``.

    flock /tmp/edgeweave-cpu.lock .venv/bin/python benchmarks/pipeline_prefill.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

from _common import print_table, write_json  # noqa: E402

from edgeweave.runtime.launch import launch  # noqa: E402
from edgeweave.runtime.local import tokenizer_for  # noqa: E402
from edgeweave.runtime.transport.frame import Op  # noqa: E402
from edgeweave.types import Plan  # noqa: E402

MODEL = "smollm2-135m-instruct"
TEXT = ("A smart thermostat learns when a house is empty, lowers the heating while nobody is "
        "home and warms the rooms again shortly before the family returns. ")
TARGET = 0.6


class CallLog:
    """Every FORWARD the coordinator sends: device, start and end (coordinator clock), the
    node's compute seconds. Wraps ``coord.call`` (the one door to the nodes); reads only."""

    def __init__(self, coord: Any) -> None:
        self.rows: list[tuple[str, float, float, float]] = []
        self._lock = threading.Lock()
        inner = coord.call

        def call(device: str, frame: Any, timeout: float) -> Any:
            t0 = time.perf_counter()
            resp = inner(device, frame, timeout)
            if frame.op == Op.FORWARD:
                with self._lock:
                    self.rows.append((device, t0, time.perf_counter(), resp.arg / 1e6))
            return resp

        coord.call = call

    def take(self) -> list[tuple[str, float, float, float]]:
        with self._lock:
            rows, self.rows = self.rows, []
        return rows


def overlap_s(rows: list[tuple[str, float, float, float]]) -> float:
    """Seconds during which two or more stages had a FORWARD in flight."""
    events = sorted([(a, 1) for _, a, _, _ in rows] + [(b, -1) for _, _, b, _ in rows])
    busy, last, total = 0, 0.0, 0.0
    for t, d in events:
        if busy >= 2:
            total += t - last
        busy, last = busy + d, t
    return total


def prefill_once(coord: Any, log: CallLog, ids: list[int], chunk: int) -> dict[str, Any]:
    coord.pipeline_chunk = chunk
    log.take()
    with coord.new_session() as s:
        t0 = time.perf_counter()
        logits = s.prefill(ids)
        ttft = time.perf_counter() - t0
        chunks = len(s.records[0])
    rows = log.take()
    per_stage = {d: sum(r[3] for r in rows if r[0] == d) for d in dict.fromkeys(r[0] for r in rows)}
    return {"ttft_s": ttft, "chunks": chunks, "compute_s": per_stage,
            "overlap_s": overlap_s(rows), "argmax": int(logits.argmax())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--chunks", default="64,128", help="pipeline_chunk values to measure")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cuts", default="10,20", help="block cut points of the 3-node plan")
    ap.add_argument("--variant", default="int4")
    ap.add_argument("--codec", default="fp16", help="hidden-state codec between stages")
    args = ap.parse_args()
    tok = tokenizer_for(MODEL)
    ids = tok.encode(TEXT * (1 + args.prompt_tokens // 20))[:args.prompt_tokens]
    plan = Plan.split(30, [int(c) for c in args.cuts.split(",")], ["n0", "n1", "n2"],
                      variant=args.variant, codec=args.codec)
    configs = {"sequential": 0, **{f"pipelined/{c}": int(c) for c in args.chunks.split(",")}}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    with launch(plan, MODEL, max_len=len(ids) + 8) as dep:
        coord = dep.coordinator
        log = CallLog(coord)
        for chunk in configs.values():  # warm-up: first-call allocations, thread pools
            prefill_once(coord, log, ids, chunk)
        for _ in range(args.rounds):
            for name, chunk in configs.items():
                runs[name].append(prefill_once(coord, log, ids, chunk))
    seq = statistics.median(r["ttft_s"] for r in runs["sequential"])
    out: dict[str, Any] = {"model": MODEL, "variant": args.variant, "codec": args.codec,
                           "prompt_tokens": len(ids), "plan": [[st.device, st.shard.start,
                                                                st.shard.end] for st in
                                                               plan.stages],
                           "rounds": args.rounds, "cpus": os.cpu_count(), "target": TARGET,
                           "configs": {}}
    rows = []
    for name, results in runs.items():
        ttft = statistics.median(r["ttft_s"] for r in results)
        stages = {d: statistics.median(r["compute_s"][d] for r in results)
                  for d in results[0]["compute_s"]}
        res = {"ttft_s": ttft, "ttft_runs_s": [r["ttft_s"] for r in results],
               "ratio": ttft / seq, "chunks": results[0]["chunks"],
               "stage_compute_s": stages, "compute_sum_s": sum(stages.values()),
               "overlap_s": statistics.median(r["overlap_s"] for r in results),
               "same_argmax": len({r["argmax"] for rr in runs.values() for r in rr}) == 1}
        out["configs"][name] = res
        rows.append([name, res["chunks"], 1e3 * ttft, res["ratio"],
                     " / ".join(f"{1e3 * v:.0f}" for v in stages.values()),
                     1e3 * res["compute_sum_s"], 1e3 * res["overlap_s"], res["same_argmax"]])
    print_table(f"Prefill of {len(ids)} tokens, 3 nodes on {os.cpu_count()} cores "
                f"({args.variant}, {args.codec} hidden states), median of {args.rounds} rounds",
                ["config", "chunks", "TTFT ms", "x sequential", "compute ms n0 / n1 / n2",
                 "compute sum ms", "overlap ms", "same argmax"], rows)
    from serve import anchor_line, genai_anchor

    # the same prompt's prefill in one onnxruntime-genai process
    out["genai_anchor"] = genai_anchor(args.variant, 8, tok.decode(ids))
    print(anchor_line(out["genai_anchor"]))
    write_json("pipeline_prefill", out)


if __name__ == "__main__":
    main()
