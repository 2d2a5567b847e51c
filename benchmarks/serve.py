"""`edgeweave serve` as a user starts it, against the engines a user would pick instead.

Everything is measured in one run, each engine in a process of its own:

* **served**: ``edgeweave serve --port P`` started exactly as the README says (its defaults:
  ONNX Runtime, the int4 variant, the process's own thread policy), driven by the official
  ``openai`` client: one greedy stream of ``--new-tokens`` tokens (EOS ignored); decode tok/s
  is counted by the client between the first and the last token;
* **raw engine**: the same engine and weights with no server (``EngineSession`` on the
  whole-model stage), the ceiling the served stream is held to (>= 95 %);
* anchors on the same source weights and thread count: onnxruntime-genai int4 and fp32 (its
  model builder, RTN block 32, accuracy level 4) and llama.cpp Q4_0 / F32 when
  ``llama_cpp`` is importable (``_llamacpp.py`` says how to build it);
* **busy core**: the served stream again while another process spins on one core
  (``python -c "while True: pass"``), as an IoT gateway always runs other work (>= 0.5x);
* **memory**: steady RSS (after decoding) and peak RSS (``VmHWM``, start-up included) of the
  server process and of every anchor's process, and the planner's predicted memory for the
  whole-model stage next to them;
* 1 / 4 / 16 concurrent streams through the same server, and the control plane's time to
  notice a SIGKILLed node (mosquitto last will).

Rounds (``--rounds``) interleave the engines; a ratio is the median over rounds of the
same-round ratio (this VM's speed drifts between minutes). Writes ``results/serve.json``.

    flock /tmp/edgeweave-cpu.lock .venv/bin/python benchmarks/serve.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

from _common import emit_result, print_table, run_child, write_json  # noqa: E402

MODEL = "smollm2-135m-instruct"
EDGEWEAVE = [sys.executable, "-c", "from edgeweave.cli.app import entry; entry()"]
QUESTION = ("You are the assistant of a smart home. The living room sensor reports 27.5 C and "
            "62% humidity, the window is closed and nobody is home. Explain what the heating, "
            "ventilation and blinds should do for the next hour, step by step.")
PROMPTS = [QUESTION, "What should a thermostat do when the window is open?",
           "Explain in one sentence why battery powered sensors sleep between readings.",
           "List two signs that a door sensor is failing."]


# -- process memory -------------------------------------------------------------------------
def rss_mb(pid: int | None = None) -> tuple[float, float]:
    """(current RSS, peak RSS ``VmHWM``) of a process in MiB."""
    status = Path(f"/proc/{pid or 'self'}/status").read_text().splitlines()
    kb = {line.split(":")[0]: int(line.split()[1]) for line in status
          if line.startswith(("VmRSS", "VmHWM"))}
    return kb["VmRSS"] / 1024, kb["VmHWM"] / 1024


def threads_default() -> int:
    return len(os.sched_getaffinity(0))


# -- the served path: `edgeweave serve` in its own process -----------------------------------
class Served:
    """``edgeweave serve`` started as a user would, on a free loopback port."""

    def __init__(self, extra: list[str] | None = None) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(f"/tmp/edgeweave-serve-bench-{self.port}.log")
        self.proc = subprocess.Popen([*EDGEWEAVE, "serve", "--port", str(self.port),
                                      "--max-tokens-limit", "512", *(extra or [])],
                                     stdout=subprocess.DEVNULL, stderr=self.log.open("wb"))
        self.t_start = time.perf_counter()
        self._wait()

    def _wait(self, timeout: float = 900.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"edgeweave serve exited: {self.log.read_text()[-1500:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    self.ready_s = time.perf_counter() - self.t_start
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("edgeweave serve did not become ready")

    def health(self) -> dict[str, Any]:
        import httpx

        return httpx.get(f"{self.url}/health", timeout=10).json()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def stream_once(url: str, prompt: str, n: int) -> dict[str, float]:
    import openai

    c = openai.OpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=600)
    t0 = time.perf_counter()
    first = last = None
    s = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                  max_tokens=n, temperature=0, stream=True,
                                  stream_options={"include_usage": True},
                                  extra_body={"ignore_eos": True})
    tokens, ew = 0, {}
    for chunk in s:
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
            ew = (chunk.model_extra or {}).get("edgeweave", {}) or ew
        if chunk.choices and chunk.choices[0].finish_reason:
            ew = (chunk.model_extra or {}).get("edgeweave", {}) or ew
    end = time.perf_counter()
    first, last = first or end, last or end
    # the client sees text, not tokens: its rate is tokens after the first over that span
    return {"ttft_s": first - t0, "total_s": end - t0, "tokens": tokens,
            "decode_tps": (tokens - 1) / (last - first) if last > first and tokens > 1 else 0.0,
            "server_decode_tps": float(ew.get("decode_tok_s") or 0.0),
            "backend": ew.get("backend"), "variant": ew.get("variant"), "edgeweave": ew}


def served_single(srv: Served, n: int, repeat: int) -> dict[str, Any]:
    stream_once(srv.url, PROMPTS[1], 8)  # warm-up: arenas, first-run allocations
    runs = [stream_once(srv.url, QUESTION, n) for _ in range(repeat)]
    rss, peak = rss_mb(srv.proc.pid)
    speeds = sorted(r["decode_tps"] for r in runs)
    return {"decode_tps": speeds[len(speeds) // 2], "decode_tps_runs": speeds,
            "server_decode_tps": statistics.median(r["server_decode_tps"] for r in runs),
            "ttft_s": statistics.median(r["ttft_s"] for r in runs),
            "rss_mb": rss, "peak_rss_mb": peak, "ready_s": srv.ready_s,
            "backend": runs[0]["backend"], "variant": runs[0]["variant"]}


def busy_core() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


# -- children: one engine each ---------------------------------------------------------------
def child_main(kind: str, precision: str, n: int, repeat: int, threads: int,
               prompt: str = "") -> None:
    """One engine in this fresh process; emits speed and memory."""
    rss0, _ = rss_mb()
    if kind == "raw":
        out = _raw(precision, n, repeat)
    elif kind == "genai":
        out = _genai(precision, n, repeat, threads, prompt)
    elif kind == "llama":
        out = _llama(precision, n, repeat, threads)
    else:
        raise SystemExit(f"unknown child {kind}")
    emit_result({**out, "rss_start_mb": rss0, "torch_loaded": "torch" in sys.modules})


def _alive(out: dict[str, Any]) -> dict[str, Any]:
    """Memory while the engine is still alive (after decoding): its steady RSS and peak."""
    rss, peak = rss_mb()
    return {**out, "rss_mb": rss, "peak_rss_mb": peak}


def _ids() -> list[int]:
    from edgeweave.runtime.local import tokenizer_for

    return tokenizer_for(MODEL).encode_chat([{"role": "user", "content": QUESTION}])


def _timed(step_first, step_next, n: int, repeat: int) -> dict[str, Any]:
    import numpy as np

    speeds = []
    for _ in range(repeat + 1):  # the first run warms up
        logits = step_first()
        tok = int(np.argmax(logits))
        t = time.perf_counter()
        for _ in range(n - 1):
            tok = int(np.argmax(step_next(tok)))
        speeds.append((n - 1) / (time.perf_counter() - t))
    speeds = sorted(speeds[1:])
    return {"decode_tps": speeds[len(speeds) // 2], "decode_tps_runs": speeds}


def _raw(precision: str, n: int, repeat: int) -> dict[str, Any]:
    from edgeweave.runtime.policy import ProcessPolicy

    ProcessPolicy.for_this_process().apply()  # what `edgeweave serve` applies
    from edgeweave.runtime.engine import EngineSession
    from edgeweave.runtime.local import EngineChoice, whole_model

    ids = _ids()
    engine = whole_model(MODEL, EngineChoice("onnx", precision))
    s = EngineSession(engine, len(ids) + n + 8)
    out = _timed(lambda: s.prefill(ids), s.decode, n, repeat)
    out = _alive(out)
    from _anchors import onnx_weight_bytes

    out["weight_bytes"] = onnx_weight_bytes(engine.path)
    return out


def _genai(precision: str, n: int, repeat: int, threads: int, prompt: str = "") -> dict[str, Any]:
    import numpy as np
    import onnxruntime_genai as og
    from _anchors import genai_folder, onnx_weight_bytes

    from edgeweave.models.catalog import resolve

    name, folder = resolve(MODEL)
    out_dir = genai_folder(folder, name, precision, threads)
    model = og.Model(str(out_dir))
    # a served genai model needs its tokenizer too (our processes hold theirs): like for like
    tokenizer = og.Tokenizer(model)
    ids = list(tokenizer.encode(tokenizer.apply_chat_template(
        json.dumps([{"role": "user", "content": prompt or QUESTION}]),
        add_generation_prompt=True)))
    speeds, prefills = [], []
    for _ in range(repeat + 1):
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + n,
                                  min_length=len(ids) + n)
        gen = og.Generator(model, params)
        t = time.perf_counter()
        gen.append_tokens(ids)  # the prompt's prefill, which yields the first token's logits
        prefills.append(time.perf_counter() - t)
        t = time.perf_counter()
        got = 0
        while not gen.is_done() and got < n - 1:
            gen.generate_next_token()
            got += 1
        speeds.append(got / (time.perf_counter() - t))
        del gen
    speeds = sorted(speeds[1:])
    del np
    return _alive({"decode_tps": speeds[len(speeds) // 2], "decode_tps_runs": speeds,
                   "prefill_s": statistics.median(prefills[1:]), "prompt_tokens": len(ids),
                   "weight_bytes": onnx_weight_bytes(next(out_dir.glob("*.onnx")))})


def _llama(precision: str, n: int, repeat: int, threads: int) -> dict[str, Any]:
    import _llamacpp

    from edgeweave.models.catalog import BUNDLED
    from edgeweave.paths import home

    gguf = _llamacpp.quantized_gguf(BUNDLED[MODEL].source(), home() / "llama-cpp" / MODEL,
                                    precision, threads)
    llm = _llamacpp.load(gguf, threads, 1024)
    ids = _ids()
    _llamacpp.run(llm, ids[:16], 8)
    runs = sorted(_llamacpp.run(llm, ids, n)["decode_tps"] for _ in range(repeat))
    return _alive({"decode_tps": runs[len(runs) // 2], "decode_tps_runs": runs,
                   "weight_bytes": _llamacpp.gguf_weight_bytes(gguf)})


def in_child(kind: str, precision: str, a: argparse.Namespace) -> dict[str, Any]:
    prompt = getattr(a, "prompt_file", "")
    got, proc = run_child([__file__, "--child", kind, "--precision", precision,
                           "--new-tokens", str(a.new_tokens), "--repeat", str(a.repeat),
                           "--threads", str(a.threads),
                           *(["--prompt-file", prompt] if prompt else [])])
    if got is None:
        return {"error": f"child exited {proc.returncode}: {proc.stderr[-400:]}"}
    return got


def genai_anchor(variant: str, tokens: int, prompt: str = "") -> dict:
    """onnxruntime-genai on the same weights in its own process, one stream (of ``prompt`` as
    the user's chat message, else the serve benchmark's question): the anchor other
    benchmarks print beside their rows, its decode rate and its prompt's prefill time."""
    import tempfile

    precision = variant if variant in ("int4", "fp32") else "int4"
    a = argparse.Namespace(new_tokens=tokens, repeat=3, threads=threads_default())
    if not prompt:
        return {**in_child("genai", precision, a), "precision": precision}
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        f.write(prompt)
        f.flush()
        a.prompt_file = f.name
        return {**in_child("genai", precision, a), "precision": precision}


def anchor_line(anchor: dict) -> str:
    """The anchor as one printed line."""
    if "error" in anchor:
        return f"anchor: onnxruntime-genai failed: {anchor['error']}"
    return (f"anchor: onnxruntime-genai {anchor.get('precision', 'int4')}, one stream in one "
            f"process (no HTTP): decode "
            f"{anchor['decode_tps']:.1f} tok/s, prefill of its {anchor['prompt_tokens']}-token "
            f"prompt {anchor['prefill_s']:.3f} s")


# -- whole run -------------------------------------------------------------------------------
def bandwidth_gbs() -> float:
    """Best-of-5 read bandwidth of a 1 GiB sum over every core (numpy in threads)."""
    import numpy as np

    x = np.ones(256 * 1024 * 1024, np.float32)
    parts = np.array_split(x, threads_default())
    best = 0.0
    with ThreadPoolExecutor(len(parts)) as pool:
        for _ in range(5):
            t = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = max(best, x.nbytes / (time.perf_counter() - t))
    return best / 1e9


def predicted_memory_mb() -> float | None:
    """The planner's memory figure for the whole model as one int4 stage."""
    try:
        from edgeweave.profile.cost import stage_memory_bytes
        from edgeweave.profile.model_costs import model_costs
        from edgeweave.variants import get
    except ImportError:
        return None
    m = model_costs(MODEL, prompt_len=64, context=512)
    return stage_memory_bytes(m, get("int4"), 0, m.n_layers) / 2**20


def concurrency(srv: Served, n: int) -> dict[str, Any]:
    out = {}
    for k in (1, 4, 16):
        t0 = time.perf_counter()
        with ThreadPoolExecutor(k) as pool:
            res = list(pool.map(lambda i: stream_once(srv.url, PROMPTS[i % len(PROMPTS)], n),
                                range(k)))
        wall = time.perf_counter() - t0
        rates = [r["decode_tps"] for r in res]
        ttfts = sorted(r["ttft_s"] for r in res)
        out[k] = {"aggregate_tps": sum(r["tokens"] for r in res) / wall,
                  "ttft_p50_s": statistics.median(ttfts),
                  "ttft_p90_s": ttfts[min(len(ttfts) - 1, int(0.9 * len(ttfts)))],
                  "fairness": min(rates) / max(rates) if max(rates) else 0.0}
    return out


def last_will(trials: int) -> dict[str, Any]:
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
    return {"trials": trials, "detected": len(lat),
            "kill_to_gone_ms_median": 1e3 * statistics.median(lat) if lat else None}


def ratio(rounds: list[dict[str, Any]], a: str, b: str) -> float | None:
    vals = sorted(r[a]["decode_tps"] / r[b]["decode_tps"] for r in rounds
                  if r.get(a, {}).get("decode_tps") and r.get(b, {}).get("decode_tps"))
    return statistics.median(vals) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=threads_default(),
                    help="threads of the anchors; the server decides its own (every core)")
    ap.add_argument("--concurrency-tokens", type=int, default=32)
    ap.add_argument("--skip", default="", help="comma list of: fp32,busy,concurrency,control")
    ap.add_argument("--child", default="")
    ap.add_argument("--precision", default="int4")
    ap.add_argument("--prompt-file", default="", help="(children) the user message to time")
    a = ap.parse_args()
    if a.child:
        prompt = Path(a.prompt_file).read_text() if a.prompt_file else ""
        child_main(a.child, a.precision, a.new_tokens, a.repeat, a.threads, prompt)
        return
    skip = set(a.skip.split(","))
    has_llama = importlib.util.find_spec("llama_cpp") is not None
    rounds: list[dict[str, Any]] = []
    for r in range(a.rounds):
        print(f"round {r + 1}/{a.rounds}", flush=True)
        row: dict[str, Any] = {}
        srv = Served()
        try:
            row["served"] = served_single(srv, a.new_tokens, a.repeat)
            if "busy" not in skip:
                hog = busy_core()
                try:
                    time.sleep(0.5)
                    row["served_busy"] = served_single(srv, a.new_tokens, a.repeat)
                finally:
                    hog.kill()
                    hog.wait()
            if r == 0 and "concurrency" not in skip:
                row["concurrency"] = concurrency(srv, a.concurrency_tokens)
        finally:
            srv.close()
        row["raw_int4"] = in_child("raw", "int4", a)
        row["genai_int4"] = in_child("genai", "int4", a)
        if has_llama:
            row["llama_int4"] = in_child("llama", "int4", a)
        if "fp32" not in skip:
            row["raw_fp32"] = in_child("raw", "fp32", a)
            row["genai_fp32"] = in_child("genai", "fp32", a)
            if has_llama:
                row["llama_fp32"] = in_child("llama", "fp32", a)
        rounds.append(row)
        print(json.dumps({k: v.get("decode_tps") for k, v in row.items()
                          if isinstance(v, dict) and "decode_tps" in v}), flush=True)
    bw = bandwidth_gbs()
    pairs = {
        "served / genai int4": ratio(rounds, "served", "genai_int4"),
        "served / llama.cpp Q4_0": ratio(rounds, "served", "llama_int4"),
        "served / raw engine int4": ratio(rounds, "served", "raw_int4"),
        "raw int4 / genai int4": ratio(rounds, "raw_int4", "genai_int4"),
        "raw int4 / llama.cpp Q4_0": ratio(rounds, "raw_int4", "llama_int4"),
        "raw fp32 / genai fp32": ratio(rounds, "raw_fp32", "genai_fp32"),
        "raw fp32 / llama.cpp F32": ratio(rounds, "raw_fp32", "llama_fp32"),
        "busy core / quiet (served)": ratio(rounds, "served_busy", "served"),
    }
    last = rounds[-1]
    keys = ["served", "served_busy", "raw_int4", "genai_int4", "llama_int4", "raw_fp32",
            "genai_fp32", "llama_fp32"]
    rows = []
    for k in keys:
        if k not in last:
            continue
        v = last[k]
        if "error" in v:
            rows.append([k, "error", v["error"][:60], "", "", "", ""])
            continue
        wb = v.get("weight_bytes") or last.get("raw_int4", {}).get("weight_bytes")
        roof = (v["decode_tps"] * wb / 1e9 / bw) if wb and k != "served_busy" else None
        med = statistics.median(x[k]["decode_tps"] for x in rounds if "decode_tps" in x.get(k, {}))
        rows.append([k, f"{med:.1f}",
                     f"{v.get('rss_mb', 0):.0f}", f"{v.get('peak_rss_mb', 0):.0f}",
                     "-" if roof is None else f"{roof:.2f}", v.get("backend") or "",
                     v.get("variant") or ""])
    print_table(f"{MODEL}: one greedy stream of {a.new_tokens} tokens, median over "
                f"{a.rounds} round(s); read bandwidth {bw:.1f} GB/s",
                ["engine", "decode tok/s", "steady RSS MB", "peak RSS MB", "roofline",
                 "backend", "variant"], rows)
    print_table("Ratios (median over rounds of same-round ratios)", ["pair", "ratio"],
                [[k, "-" if v is None else f"{v:.2f}"] for k, v in pairs.items()])
    mem = {"server_steady_mb": last["served"]["rss_mb"],
           "server_peak_mb": last["served"]["peak_rss_mb"],
           "genai_int4_steady_mb": last["genai_int4"].get("rss_mb"),
           "raw_int4_steady_mb": last["raw_int4"].get("rss_mb"),
           "raw_int4_peak_mb": last["raw_int4"].get("peak_rss_mb"),
           "planner_predicted_mb": predicted_memory_mb()}
    if mem["genai_int4_steady_mb"]:
        mem["server_vs_genai"] = mem["server_steady_mb"] / mem["genai_int4_steady_mb"]
        mem["engine_vs_genai"] = (mem["raw_int4_steady_mb"] or 0) / mem["genai_int4_steady_mb"]
    mem["server_peak_vs_steady"] = mem["server_peak_mb"] / mem["server_steady_mb"]
    if mem["planner_predicted_mb"]:
        mem["predicted_vs_engine"] = mem["planner_predicted_mb"] / (mem["raw_int4_steady_mb"]
                                                                    or 1)
        mem["predicted_vs_engine_peak"] = mem["planner_predicted_mb"] / (
            mem["raw_int4_peak_mb"] or 1)
    print_table("Memory (MiB)", ["figure", "value"], [[k, "-" if v is None else f"{v:.2f}"]
                                                     for k, v in mem.items()])
    conc = rounds[0].get("concurrency")
    if conc:
        print_table(f"Concurrent streams ({a.concurrency_tokens} tokens each)",
                    ["streams", "aggregate tok/s", "TTFT p50 s", "TTFT p90 s", "fairness"],
                    [[k, v["aggregate_tps"], v["ttft_p50_s"], v["ttft_p90_s"], v["fairness"]]
                     for k, v in conc.items()])
    control = last_will(5) if "control" not in skip else None
    if control:
        print_table("Control plane (mosquitto, loopback)", ["trials", "detected", "median ms"],
                    [[control["trials"], control["detected"], control["kill_to_gone_ms_median"]]])
    write_json("serve", {"model": MODEL, "new_tokens": a.new_tokens, "threads": a.threads,
                         "bandwidth_gbs": bw, "rounds": rounds, "ratios": pairs,
                         "memory": mem, "control_plane": control})


if __name__ == "__main__":
    main()
