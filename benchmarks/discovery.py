"""A fleet that assembles itself, timed on the bundled model (issue 18).

Three `edgeweave node --mqtt` processes (mutual TLS, the default engine: ONNX Runtime int4)
and mosquitto on 127.0.0.1; then `serve --mqtt` with no plan (``serve.deploy.build``):

* **serve start -> first token**: from ``build()`` (discovery, planning, attaching, the nodes
  loading their stages) to the first generated token (target < 10 s once the nodes are up);
* **join**: a fourth node starts; from its ready line to the re-plan that uses it, and the
  first token on the new plan (target < 2 s after the switch);
* **leave**: a node of the plan is SIGKILLed between requests; from the kill to the plan
  without it, and the next first token;
* **decode speed**: the discovered coordinator against one attached by hand to the same
  nodes with the same plan (target >= 0.95x), rounds alternating.

Run: ``flock /tmp/edgeweave-cpu.lock .venv/bin/python benchmarks/discovery.py``; prints a table
and writes results/discovery.json. ``--objective throughput`` (default) pipelines the blocks
over the nodes; ``latency`` may put them all on one node.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import print_table, write_json

from edgeweave.control.assemble import DiscoveryOptions
from edgeweave.control.broker import Mosquitto
from edgeweave.models.catalog import DEFAULT_MODEL
from edgeweave.paths import atomic_write_json
from edgeweave.runtime.deployment import stop_processes
from edgeweave.runtime.generate import SamplingParams, generate
from edgeweave.runtime.launch import wait_ready
from edgeweave.security.certs import init_fleet
from edgeweave.serve.backend import close_session
from edgeweave.serve.deploy import build

PROMPT = "What is the capital of France?"
FLEET = "bench"


def node(model: str, name: str, mqtt: str, certs: Path, logs: Path, cls: str
         ) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-c", "from edgeweave.cli.app import entry; entry()", "node",
           "--model", model, "--host", "127.0.0.1", "--port", "0", "--tls-dir", str(certs),
           "--name", name, "--mqtt", mqtt, "--fleet", FLEET, "--device-class", cls,
           "--colocated"]
    with open(logs / f"{name}.log", "wb") as err:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)


def first_token_s(backend) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    session = backend.new_session(256)
    try:
        generate(session, backend.tokenizer, PROMPT, SamplingParams(max_tokens=1, ignore_eos=True))
    finally:  # as the server does after each request: a re-plan replays open sessions only
        close_session(session)
    return time.perf_counter() - t0


def decode_tps(session_factory, tok, n: int) -> tuple[float, list[int]]:  # noqa: ANN001
    session = session_factory()
    try:
        out = generate(session, tok, PROMPT, SamplingParams(max_tokens=n, ignore_eos=True))
    finally:
        close_session(session)
    return out.metrics.decode_tps, out.token_ids


def fmt_plan(stages: list) -> str:
    return " ".join(f"{p[0]}[{p[1]},{p[2]})" for p in stages)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--objective", default="throughput")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--class", dest="cls", default="rpi5-8gb",
                    help="catalog class the nodes announce")
    a = ap.parse_args()
    # the coordinator's preload/switch lines show where a re-plan's time goes
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("edgeweave.runtime.coordinator").setLevel(logging.INFO)

    root = Path(tempfile.mkdtemp(prefix="edgeweave-discovery-"))
    certs = root / "certs"
    init_fleet(certs, ("coordinator", "node0", "node1", "node2", "node3"))
    fleet_file = root / "fleet.yaml"  # the newcomer is worth it: a faster class
    fleet_file.write_text("devices:\n  node3: {class: minipc-n100}\n")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    res: dict[str, object] = {"model": a.model, "objective": a.objective}
    with Mosquitto() as broker:
        mqtt = f"{broker.host}:{broker.port}"
        try:
            t_nodes = time.perf_counter()
            for n in ("node0", "node1", "node2"):
                procs[n] = node(a.model, n, mqtt, certs, root, a.cls)
            for n in ("node0", "node1", "node2"):
                wait_ready(procs[n], root / f"{n}.log", 300)
            res["nodes_up_s"] = time.perf_counter() - t_nodes

            def serve_once() -> tuple[object, float, float]:
                t0 = time.perf_counter()
                stack = build(a.model, mqtt=mqtt, fleet=FLEET, fleet_file=fleet_file,
                              tls_dir=certs, objective=a.objective,
                              discovery=DiscoveryOptions(min_nodes=3, wait_s=120))
                built = time.perf_counter() - t0
                return stack, built, built + first_token_s(stack.backend)

            # a first serve builds the stages' ONNX exports once (cached for every later
            # start); the measured serve is the second, as every start after the first
            stack, built, ttft = serve_once()
            res["first_serve_cold"] = {"build_s": built, "first_token_s": ttft}
            stack.close()
            stack, built, ttft = serve_once()
            res["serve_to_first_token"] = {"build_s": built, "first_token_s": ttft}
            coord = stack.backend.coordinator
            plan = coord.plan
            res["plan"] = [[s.device, s.shard.start, s.shard.end, s.variant] for s in plan.stages]

            # decode speed: discovered vs the same plan given by hand (`serve --plan plan.json
            # --node DEVICE=HOST:PORT ...`, so the same prefix cache and backend), same nodes,
            # the order alternating between rounds
            plan_file = root / "plan.json"
            atomic_write_json(plan_file, {"plan": plan.to_dict()})
            hand = build(a.model, plan=plan_file, tls_dir=certs,
                         nodes=[f"{d}={addr}" for d, addr in coord.addresses.items()
                                if d in {s.device for s in plan.stages}])
            disc, manual, same = [], [], True
            for k in range(a.rounds):
                order = [("d", stack.backend), ("h", hand.backend)]
                ids = {}
                for which, b in order if k % 2 == 0 else order[::-1]:
                    tps, ids[which] = decode_tps(lambda b=b: b.new_session(512), b.tokenizer,
                                                 a.tokens)
                    (disc if which == "d" else manual).append(tps)
                same = same and ids["d"] == ids["h"]
            hand.close()
            res["decode"] = {"discovered_tps": disc, "by_hand_tps": manual,
                             "ratio": statistics.median(disc) / statistics.median(manual),
                             "same_tokens": same}

            # join: a fourth node
            t0 = time.perf_counter()
            procs["node3"] = node(a.model, "node3", mqtt, certs, root, a.cls)
            wait_ready(procs["node3"], root / "node3.log", 300)
            t_ready = time.perf_counter()
            r = stack.assembler.wait_replan("node3", timeout=60)
            t_replan = time.perf_counter()
            res["join"] = {"node_start_s": t_ready - t0, "ready_to_replanned_s":
                           t_replan - t_ready, "changed": bool(r and r.changed),
                           "decide_s": r.decide_s if r else None,
                           "switch_s": r.switch_s if r else None,
                           "first_token_after_s": first_token_s(stack.backend),
                           "plan": [[s.device, s.shard.start, s.shard.end]
                                    for s in coord.plan.stages]}

            # leave: SIGKILL a node of the plan between requests
            victim = coord.plan.stages[0].device
            t0 = time.perf_counter()
            procs[victim].kill()
            procs[victim].wait(10)
            while victim in {s.device for s in coord.plan.stages}:
                if time.perf_counter() - t0 > 60:
                    break
                time.sleep(0.01)
            t_plan = time.perf_counter() - t0
            res["leave"] = {"victim": victim, "kill_to_new_plan_s": t_plan,
                            "first_token_after_s": first_token_s(stack.backend),
                            "plan": [[s.device, s.shard.start, s.shard.end]
                                     for s in coord.plan.stages]}
            stack.close()
        finally:
            stop_processes(procs.values())

    s, d, j, lv = res["serve_to_first_token"], res["decode"], res["join"], res["leave"]
    print_table("Discovery (3 nodes, bundled model, default engine)", ["measure", "value"], [
        ["nodes up (start to ready, parallel) s", res["nodes_up_s"]],
        ["first serve (cold ONNX exports) to first token s",
         res["first_serve_cold"]["first_token_s"]],
        ["serve start -> plan attached s", s["build_s"]],
        ["serve start -> first token s (target < 10)", s["first_token_s"]],
        ["plan", fmt_plan(res["plan"])],
        ["decode tok/s discovered (median)", statistics.median(d["discovered_tps"])],
        ["decode tok/s by hand (median)", statistics.median(d["by_hand_tps"])],
        ["ratio (target >= 0.95)", d["ratio"]],
        ["same tokens", d["same_tokens"]],
        ["join: ready -> re-planned s", j["ready_to_replanned_s"]],
        ["join: decide / switch s", f"{j['decide_s']:.3g} / {j['switch_s']:.3g}"],
        ["join: first token on the new plan s (target < 2)", j["first_token_after_s"]],
        ["join: plan", fmt_plan(j["plan"])],
        ["leave: plan", fmt_plan(lv["plan"])],
        ["leave: kill -> new plan s", lv["kill_to_new_plan_s"]],
        ["leave: next first token s", lv["first_token_after_s"]],
    ])
    from serve import anchor_line, genai_anchor

    res["genai_anchor"] = genai_anchor("int4", 64)  # one process, no fleet
    print(anchor_line(res["genai_anchor"]))
    write_json("discovery", res)


if __name__ == "__main__":
    main()
