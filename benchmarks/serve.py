"""The OpenAI-compatible server under 1, 4 and 16 concurrent streams, and the control plane's
detection time for a killed node.

Serving: the bundled SmolLM2 behind a real uvicorn server on 127.0.0.1, driven by the official
``openai`` client from threads (greedy, ``max_tokens`` new tokens each, EOS ignored so every
stream does the same work). Baseline in the same run: the same generation in-process, no HTTP
(``generate`` on a ``LocalEngine``). Reported: aggregate tok/s, client-side TTFT (p50/max),
per-stream decode tok/s, and fairness = slowest / fastest stream's decode rate.

Control plane: a node agent process on a mosquitto broker is SIGKILLed; the time until the
FleetMonitor reports it ``gone`` (last will) is measured over several trials.

    .venv/bin/python benchmarks/serve.py [--new-tokens 32] [--trials 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

from _common import print_table, write_json  # noqa: E402

from edgeweave.runtime.generate import SamplingParams, generate  # noqa: E402
from edgeweave.serve.backend import LocalSessions  # noqa: E402
from edgeweave.serve.config import ServeConfig  # noqa: E402
from edgeweave.serve.server import BackgroundServer  # noqa: E402

MODEL = "smollm2-135m-instruct"
PROMPTS = ["Summarise the kitchen sensor readings: 21.5 C, 40% humidity, CO2 650 ppm.",
           "What should a thermostat do when the window is open?",
           "Explain in one sentence why battery powered sensors sleep between readings.",
           "List two signs that a door sensor is failing."]


def stream_once(url: str, prompt: str, n: int) -> dict[str, float]:
    import openai

    c = openai.OpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=600)
    t0 = time.perf_counter()
    first = None
    s = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                  max_tokens=n, temperature=0, stream=True,
                                  stream_options={"include_usage": True},
                                  extra_body={"ignore_eos": True})
    tokens = 0
    for chunk in s:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    first = first or end
    return {"ttft_s": first - t0, "total_s": end - t0, "tokens": tokens,
            "decode_tps": (tokens - 1) / (end - first) if end > first and tokens > 1 else 0.0}


def bench_serving(n_new: int) -> tuple[dict, list[list]]:
    sessions = LocalSessions.load(MODEL)
    params = SamplingParams(max_tokens=n_new, ignore_eos=True)
    direct = generate(sessions.new_session(), sessions.tokenizer,
                      [{"role": "user", "content": PROMPTS[0]}], params, chat=True)
    # like for like: HTTP "aggregate" is tokens / wall (prefill and TTFT included), so the
    # in-process baseline is tokens / total time too; per-stream rates compare decode only
    base_tps = n_new / direct.metrics.total_s
    base_decode = direct.metrics.decode_tps
    out: dict = {"baseline_in_process": {"aggregate_tps": base_tps, "decode_tps": base_decode,
                                         "ttft_s": direct.metrics.ttft_s}}
    rows = [["in-process (no HTTP)", 1, n_new, direct.metrics.total_s, base_tps,
             direct.metrics.ttft_s, direct.metrics.ttft_s, base_decode, 1.0, 1.0, 1.0]]
    cfg = ServeConfig(api_keys=("bench",), max_concurrent=16, max_tokens_limit=n_new,
                      default_max_tokens=n_new)
    with BackgroundServer(sessions, cfg) as url:
        stream_once(url, PROMPTS[0], 4)  # warm-up
        for k in (1, 4, 16):
            t0 = time.perf_counter()
            with ThreadPoolExecutor(k) as pool:
                res = list(pool.map(lambda i: stream_once(url, PROMPTS[i % len(PROMPTS)], n_new),
                                    range(k)))
            wall = time.perf_counter() - t0
            total = sum(r["tokens"] for r in res)
            rates = [r["decode_tps"] for r in res]
            ttfts = [r["ttft_s"] for r in res]
            agg = total / wall
            out[f"streams_{k}"] = {
                "streams": k, "finished": sum(r["tokens"] == n_new for r in res),
                "tokens": total, "wall_s": wall, "aggregate_tps": agg,
                "aggregate_vs_in_process": agg / base_tps,
                "ttft_p50_s": statistics.median(ttfts), "ttft_max_s": max(ttfts),
                "per_stream_decode_tps": statistics.mean(rates),
                "per_stream_decode_vs_in_process": statistics.mean(rates) / base_decode,
                "fairness_min_over_max": min(rates) / max(rates) if max(rates) else 0.0}
            o = out[f"streams_{k}"]
            rows.append([f"HTTP, {k} stream(s)", k, total, wall, agg, o["ttft_p50_s"],
                         o["ttft_max_s"], o["per_stream_decode_tps"],
                         o["fairness_min_over_max"], o["aggregate_vs_in_process"],
                         o["per_stream_decode_vs_in_process"]])
    return out, rows


def bench_last_will(trials: int) -> tuple[dict, list[list]]:
    from edgeweave.control.broker import Mosquitto
    from edgeweave.control.events import EventKind
    from edgeweave.control.monitor import FleetMonitor

    lat = []
    with Mosquitto() as b, FleetMonitor(b.host, b.port, fleet="bench") as mon:
        for i in range(trials):
            dev = f"node{i}"
            p = subprocess.Popen([sys.executable, "-m", "edgeweave.control.agent", "--host",
                                  b.host, "--port", str(b.port), "--fleet", "bench", "--device",
                                  dev, "--heartbeat", "0.5"], stdout=subprocess.PIPE, text=True)
            p.stdout.readline()
            assert mon.wait_for(EventKind.JOINED, dev, 10)
            t0 = time.monotonic()
            p.kill()
            ev = mon.wait_for(EventKind.GONE, dev, 30)
            p.wait(5)
            p.stdout.close()
            if ev is not None:
                lat.append(ev.at - t0)
    out = {"trials": trials, "detected": len(lat), "kill_to_gone_ms_median":
           1e3 * statistics.median(lat), "kill_to_gone_ms_max": 1e3 * max(lat)}
    return out, [["SIGKILL -> last will -> gone", trials, len(lat),
                  out["kill_to_gone_ms_median"], out["kill_to_gone_ms_max"]]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--trials", type=int, default=5)
    a = ap.parse_args()
    serving, rows = bench_serving(a.new_tokens)
    print_table(f"Serving {MODEL} ({a.new_tokens} new tokens per stream, greedy)",
                ["setup", "streams", "tokens", "wall s", "aggregate tok/s", "TTFT p50 s",
                 "TTFT max s", "per-stream tok/s", "fairness min/max", "aggregate vs in-process",
                 "decode vs in-process"], rows)
    control, crow = bench_last_will(a.trials)
    print_table("Control plane (mosquitto, loopback)",
                ["event", "trials", "detected", "median ms", "max ms"], crow)
    write_json("serve", {"model": MODEL, "new_tokens": a.new_tokens, "serving": serving,
                         "control_plane": control})


if __name__ == "__main__":
    main()
