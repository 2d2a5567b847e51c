"""Distributed runtime on loopback with the bundled model (SmolLM2-135M, 30 blocks) on the
default engine (ONNX Runtime, ``--variant``, int4 by default).

Measures, in one run against a single-process baseline:
  * **as the README tells a user**: three ``edgeweave node --stage A:B`` processes started by
    hand (no launcher: each applies its own thread policy) and ``edgeweave serve --plan
    plan.json --node n0=... --node n1=... --node n2=...``, driven over HTTP by the official
    ``openai`` client, against ``edgeweave serve`` with no plan in the same run (target
    >= 0.8x, greedy text identical), and beside them the same nodes with ``--frames-port
    -1`` (frames on gRPC only, as before the frame socket) and with mutual TLS
    (``edgeweave certs init``, ``--tls-dir`` on the nodes and on ``serve``);
  * decode tok/s of a 3-node loopback deployment (real ``edgeweave node`` processes, gRPC)
    per hidden-state codec, and the ratio to one process (target >= 0.8x);
  * per-token overhead per hop (round trip seen by the coordinator minus the node's compute
    time; target < 2 ms at fp16) and bytes on the wire per token by codec, and a PING's
    round trip to a launched node over its gRPC stream and over its frame socket;
  * recovery time after SIGKILL of the middle node mid-stream (target < 10 s), checking the
    stream's tokens against an undisturbed run;
  * aggregate throughput with 1, 4 and 16 concurrent streams.
The anchor, onnxruntime-genai on the same weights in one process, prints beside the README
row.
Greedy decoding, ``--tokens`` new tokens after a chat prompt. Every round runs every
configuration back to back; a configuration's ratio is the median over rounds of its tok/s
divided by the best single-process run *of the same round* (this VM's speed drifts by 20-30 %
between minutes, so ratios across rounds would mostly measure the drift). Best-of-rounds tok/s
are printed too. Prints tables and writes results/runtime.json.

    flock /tmp/edgeweave-cpu.lock .venv/bin/python benchmarks/runtime.py [--tokens 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

from _common import print_table, write_json  # noqa: E402

from edgeweave.runtime.generate import SamplingParams, generate  # noqa: E402
from edgeweave.runtime.launch import embedded, launch  # noqa: E402
from edgeweave.runtime.local import EngineChoice, LocalModel  # noqa: E402
from edgeweave.types import Plan  # noqa: E402

MODEL = "smollm2-135m-instruct"
QUESTION = "Explain in a few sentences how a smart thermostat saves energy in a house."


def run(engine, tok, ids, n):  # noqa: ANN001, ANN201
    return generate(engine, tok, ids, SamplingParams(max_tokens=n, ignore_eos=True))


def best(results):  # noqa: ANN001, ANN201
    return max(results, key=lambda r: r.metrics.decode_tps)


def paired_ratio(results, singles_per_round):  # noqa: ANN001, ANN201
    """Median over rounds of tok/s / the same round's best single-process tok/s."""
    ratios = sorted(r.metrics.decode_tps / max(q.metrics.decode_tps for q in sq)
                    for r, sq in zip(results, singles_per_round, strict=True))
    return statistics.median(ratios), ratios


def transport(address: str, rounds: int, n: int = 2000) -> dict:
    """Round trips of a PING to a real ``edgeweave node`` through its gRPC stream and
    through the frame socket ``dial`` switches to, empty and carrying one fp16 hidden
    state of the bundled model (1,152 bytes); alternating rounds, medians in us."""
    from edgeweave.runtime.transport.dial import dial
    from edgeweave.runtime.transport.frame import Frame, Op
    from edgeweave.runtime.transport.grpc_link import GrpcLink

    links = {"gRPC stream": GrpcLink(address), "frame socket": dial(address)}
    out: dict = {name: {"empty": [], "1152 B": []} for name in links}
    try:
        for _ in range(rounds):
            for name, link in links.items():
                for label, size in (("empty", 0), ("1152 B", 1152)):
                    times = []
                    for _ in range(n):
                        t0 = time.perf_counter()
                        link.call(Frame(Op.PING, payload=bytes(size)), 10)
                        times.append(time.perf_counter() - t0)
                    out[name][label].append(1e6 * statistics.median(times))
    finally:
        for link in links.values():
            link.close()
    out["kinds"] = {name: type(link).__name__ for name, link in links.items()}
    return out


def readme_fleet(variant: str, cuts: list[int], tokens: int, rounds: int) -> dict:
    """Nodes and server started with the README's commands; one process vs 3 nodes, HTTP."""
    import json as _json
    import subprocess
    import tempfile

    from serve import EDGEWEAVE, Served, stream_once

    from edgeweave.runtime.deployment import stop_processes
    from edgeweave.runtime.launch import wait_ready

    n = 30
    bounds = [0, *cuts, n]
    # a plan written by hand, no codec given: hidden states travel in fp32 (the planner too
    # prefers fp32 over fp16 on links faster than 2.3 Gbit/s, where halving 2.3 KB saves less
    # than fp16's conversion costs)
    plan = Plan.split(n, cuts, ["n0", "n1", "n2"], variant=variant)
    tmp = Path(tempfile.mkdtemp(prefix="edgeweave-readme-"))
    (tmp / "plan.json").write_text(_json.dumps({"plan": plan.to_dict()}))
    nodes: list = []
    certs = tmp / "certs"  # as a user makes them: `edgeweave certs init DIR NAMES...`
    subprocess.run([*EDGEWEAVE, "certs", "init", str(certs), "coordinator", "n0", "n1", "n2"],
                   check=True, capture_output=True)
    # the README's nodes; the same with --frames-port -1 (gRPC only); the same with mTLS
    fleets: dict[str, list] = {"fleet": [], "fleet_grpc": [], "fleet_tls": []}
    try:
        for key, extra in (("fleet", []), ("fleet_grpc", ["--frames-port", "-1"]),
                           ("fleet_tls", ["--tls-dir", str(certs)])):
            for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
                log = tmp / f"{key}-n{i}.log"
                names = ["--name", f"n{i}"] if key == "fleet_tls" else []
                # exactly the README's command line: the node decides its own threads and waits
                proc = subprocess.Popen([*EDGEWEAVE, "node", "--stage", f"{a}:{b}", "--variant",
                                         variant, "--colocated", *extra, *names],
                                        stdout=subprocess.PIPE, stderr=log.open("wb"))
                nodes.append(proc)
                fleets[key].append((proc, log))
        addrs = {key: [wait_ready(p, log, 900) for p, log in procs]
                 for key, procs in fleets.items()}
        servers = {"single": Served(["--variant", variant])}
        try:
            for key in fleets:
                tls = ["--tls-dir", str(certs)] if key == "fleet_tls" else []
                servers[key] = Served(["--plan", str(tmp / "plan.json"), *tls,
                                       *[x for i, ad in enumerate(addrs[key])
                                         for x in ("--node", f"n{i}={ad}")]])
        except BaseException:
            for srv in servers.values():
                srv.close()
            raise
        try:
            text_of = {}
            per: dict[str, list] = {key: [] for key in servers}
            for srv in servers.values():  # warm-up
                stream_once(srv.url, "What should a thermostat do when the window is open?", 8)
            for _ in range(rounds):
                for key, srv in servers.items():
                    per[key].append(stream_once(srv.url, QUESTION, tokens)["decode_tps"])
            for key, srv in servers.items():
                import openai

                c = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0)
                r = c.chat.completions.create(model=MODEL, temperature=0, max_tokens=tokens,
                                              messages=[{"role": "user", "content": QUESTION}])
                text_of[key] = r.choices[0].message.content
            health = servers["fleet"].health()
        finally:
            for srv in servers.values():
                srv.close()
    finally:
        stop_processes(nodes)
    ratios = sorted(f / s for f, s in zip(per["fleet"], per["single"], strict=True))
    grpc = sorted(f / s for f, s in zip(per["fleet_grpc"], per["single"], strict=True))
    mtls = sorted(f / s for f, s in zip(per["fleet_tls"], per["single"], strict=True))
    return {"single_tps": per["single"], "fleet_tps": per["fleet"],
            "ratio_median": statistics.median(ratios), "ratios": ratios,
            "same_text": text_of["single"] == text_of["fleet"],
            "grpc_only_tps": per["fleet_grpc"], "grpc_only_ratio_median": statistics.median(grpc),
            "grpc_only_same_text": text_of["single"] == text_of["fleet_grpc"],
            "mtls_tps": per["fleet_tls"], "mtls_ratio_median": statistics.median(mtls),
            "mtls_same_text": text_of["single"] == text_of["fleet_tls"],
            "backend": health.get("backend"), "variant": health.get("variant"),
            "plan": [f"{s['device']}{s['blocks']}" for s in health.get("plan", [])]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cuts", default="10,20", help="block cut points of the 3-node plan")
    ap.add_argument("--replay", default="exact", choices=["exact", "batched"])
    ap.add_argument("--stream-tokens", type=int, default=16,
                    help="new tokens per stream in the concurrency runs")
    ap.add_argument("--node-blas-threads", type=int, default=0,
                    help="OpenBLAS threads per node process (0 = the launcher's default)")
    ap.add_argument("--blas-timeout", type=int, default=0,
                    help="OPENBLAS_THREAD_TIMEOUT for the nodes: idle workers spin 2^N cycles")
    ap.add_argument("--variant", default="int4")
    ap.add_argument("--only-readme", action="store_true",
                    help="only the README row (hand-started nodes behind edgeweave serve)")
    args = ap.parse_args()
    n = args.tokens
    cuts = [int(c) for c in args.cuts.split(",")]
    readme = readme_fleet(args.variant, cuts, n, args.rounds)
    from serve import genai_anchor

    anchor = genai_anchor(args.variant, n)
    readme["genai_anchor"] = anchor
    print_table(f"As the README says: 3 `edgeweave node` + `edgeweave serve --plan --node` vs "
                f"`edgeweave serve`, HTTP, {args.variant}, {n} tokens, {args.rounds} rounds",
                ["setup", "tok/s per round", "x single (median)", "same text"],
                [["edgeweave serve (one process)", [round(x, 1) for x in readme["single_tps"]],
                  1.0, ""],
                 ["3 nodes + serve --plan --node", [round(x, 1) for x in readme["fleet_tps"]],
                  readme["ratio_median"], readme["same_text"]],
                 ["the same, nodes with --frames-port -1 (gRPC only)",
                  [round(x, 1) for x in readme["grpc_only_tps"]],
                  readme["grpc_only_ratio_median"], readme["grpc_only_same_text"]],
                 ["the same with mutual TLS (--tls-dir on nodes and serve)",
                  [round(x, 1) for x in readme["mtls_tps"]],
                  readme["mtls_ratio_median"], readme["mtls_same_text"]],
                 ["anchor: onnxruntime-genai, one process, no HTTP",
                  round(anchor.get("decode_tps", 0.0), 1), "", ""]])
    if args.only_readme:
        write_json("runtime", {"model": MODEL, "readme_fleet": readme})
        return
    node_env = {}
    if args.node_blas_threads:
        node_env["OPENBLAS_NUM_THREADS"] = str(args.node_blas_threads)
    if args.blas_timeout:
        node_env["OPENBLAS_THREAD_TIMEOUT"] = str(args.blas_timeout)

    lm = LocalModel.load(MODEL, EngineChoice(variant=args.variant))
    tok = lm.tokenizer
    ids = tok.encode_chat([{"role": "user", "content": QUESTION}])
    nl = 30
    max_len = len(ids) + max(n, args.stream_tokens) + 8  # the concurrency runs use theirs

    plans = {c: Plan.split(nl, cuts, ["n0", "n1", "n2"], variant=args.variant, codec=c)
             for c in ("fp32", "fp16", "int8")}
    out: dict = {"model": MODEL, "prompt_tokens": len(ids), "new_tokens": n, "cuts": cuts,
                 "node_env": node_env, "variant": args.variant, "readme_fleet": readme}

    with launch(plans["fp32"], MODEL, max_len=max_len, replay=args.replay,
                env=node_env or None) as dep:
        coord = dep.coordinator
        out["transport"] = transport(dep.addresses["n1"], args.rounds)
        inproc = embedded(MODEL, plans["fp32"], max_len=max_len).coordinator
        # rounds interleave every configuration, so background load hurts all alike
        runs: dict[str, list] = {}
        per_round: list[list] = []
        for _ in range(args.rounds):
            per_round.append([run(lm.new_session(max_len), tok, ids, n)])
            with inproc.new_session() as s:
                runs.setdefault("inproc-fp32", []).append(run(s, tok, ids, n))
            for codec, p in plans.items():
                coord.apply_plan(p)
                with coord.new_session() as s:
                    runs.setdefault(codec, []).append(run(s, tok, ids, n))
            coord.apply_plan(plans["fp16"])  # the loop above ended on int8
            coord.logits_codec = "top64"  # fp16 hidden states, top-64 logits on the last hop
            with coord.new_session() as s:
                runs.setdefault("fp16+top64", []).append(run(s, tok, ids, n))
            coord.logits_codec = "fp32"
        singles = [r for rr in per_round for r in rr]
        single = best(singles)
        ref_tokens = single.token_ids
        out["single_process"] = {"decode_tps": single.metrics.decode_tps,
                                 "ttft_s": single.metrics.ttft_s}
        rows, codecs_out = [], {}
        for name, results in runs.items():
            r = best(results)
            x = r.metrics.extra
            positions = len(ids) + n - 1
            hid = x["hidden_bytes"] / positions / len(cuts)  # per token per stage boundary
            ratio, ratios = paired_ratio(results, per_round)
            codecs_out[name] = {
                "decode_tps": r.metrics.decode_tps,
                "ratio_vs_single": ratio, "ratios_per_round": ratios,
                "ratio_best_vs_best": r.metrics.decode_tps / single.metrics.decode_tps,
                "hop_overhead_ms": x["hop_overhead_ms"], "hop_rtt_ms": x["hop_rtt_ms"],
                "hop_overhead_median_ms": x["hop_overhead_median_ms"],
                "hop_overhead_p90_ms": x["hop_overhead_p90_ms"],
                "hop_compute_ms": x["hop_compute_ms"],
                "hidden_bytes_per_token_per_boundary": hid,
                "wire_bytes_per_token": (x["bytes_sent"] + x["bytes_received"]) / positions,
                "same_tokens_as_single": r.token_ids == ref_tokens,
                "token_agreement": sum(a == b for a, b in zip(r.token_ids, ref_tokens,
                                                              strict=False)) / n,
                "all_rounds_tps": [q.metrics.decode_tps for q in results],
            }
            c = codecs_out[name]
            rows.append([name, c["decode_tps"], c["ratio_vs_single"], c["ratio_best_vs_best"],
                         c["hop_overhead_ms"], c["hop_overhead_median_ms"],
                         c["hop_compute_ms"], hid, c["wire_bytes_per_token"],
                         c["same_tokens_as_single"]])
        out["three_stages"] = codecs_out
        out["single_process"]["all_rounds_tps"] = [q.metrics.decode_tps for q in singles]

        # -- concurrency (fp16) --------------------------------------------------------
        coord.apply_plan(plans["fp16"])
        conc_rows, conc = [], {}
        for k in (1, 4, 16):
            done: list = []

            def worker(sink: list) -> None:
                with coord.new_session() as s:
                    sink.append(run(s, tok, ids, args.stream_tokens))

            threads = [threading.Thread(target=worker, args=(done,)) for _ in range(k)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            total = sum(len(d.token_ids) for d in done)
            conc[str(k)] = {"streams": k, "finished": len(done), "tokens": total,
                            "wall_s": wall, "aggregate_tps": total / wall,
                            "mean_stream_decode_tps": sum(d.metrics.decode_tps for d in done)
                            / max(len(done), 1)}
            conc_rows.append([k, len(done), total, wall, total / wall,
                              conc[str(k)]["mean_stream_decode_tps"]])
        out["concurrency_fp16"] = conc

        # -- recovery after killing the middle node -------------------------------------
        with coord.new_session() as s:
            undisturbed = run(s, tok, ids, n).token_ids
        s = coord.new_session()
        from edgeweave.runtime.generate import generate_step

        gen = generate_step(s, ids, SamplingParams(max_tokens=n, ignore_eos=True))
        got = [next(gen) for _ in range(n // 2)]
        dep.kill("n1")
        t0 = time.perf_counter()
        got.append(next(gen))
        stall = time.perf_counter() - t0
        got += list(gen)
        st = s.stats
        out["recovery"] = {"killed": "n1", "replay": args.replay, "recovery_s": st["recovery_s"],
                           "stall_s": stall, "replayed_tokens": st["replayed_tokens"],
                           "identical_to_undisturbed": got == undisturbed,
                           "plan_after": [f"{x.device}{x.shard}" for x in coord.plan.stages]}
        s.close()

    base = single.metrics.decode_tps
    print_table(f"3 stages (3 node processes on loopback, or in-process) vs one process "
                f"(best {base:.1f} tok/s), {MODEL}, {n} new tokens, {args.rounds} rounds",
                ["deployment/codec", "best tok/s", "x single (median)", "x single (best)",
                 "hop overhead ms (mean)", "(median)", "hop compute ms",
                 "hidden B/tok/boundary", "wire B/tok", "same tokens"], rows)
    print_table("Concurrent streams (3 nodes, fp16)",
                ["streams", "finished", "tokens", "wall s", "aggregate tok/s",
                 "per-stream tok/s"], conc_rows)
    tr = out["transport"]
    print_table("PING round trips to a launched node (us, median of 2,000 per round; rounds)",
                ["link", "class", "empty", "1,152 B (one fp16 hidden state)"],
                [[name, tr["kinds"][name], [round(x) for x in tr[name]["empty"]],
                  [round(x) for x in tr[name]["1152 B"]]] for name in tr["kinds"]])
    rec = out["recovery"]
    print_table("Recovery after SIGKILL of the middle node",
                ["recovery s", "stall s", "replayed tokens", "identical"],
                [[rec["recovery_s"], rec["stall_s"], rec["replayed_tokens"],
                  rec["identical_to_undisturbed"]]])
    out["targets"] = {
        "readme_fleet_ge_0.8": readme["ratio_median"] >= 0.8 and readme["same_text"],
        "hop_overhead_fp16_lt_2ms": codecs_out["fp16"]["hop_overhead_ms"] < 2.0,
        "three_node_ratio_ge_0.8": codecs_out["fp16"]["ratio_vs_single"] >= 0.8,
        "recovery_lt_10s": rec["stall_s"] < 10.0,
    }
    print("\ntargets:", out["targets"])
    write_json("runtime", out)


if __name__ == "__main__":
    main()
