"""Planner benchmark: planning time at scale, and our plan vs the baselines.

    .venv/bin/python benchmarks/plan.py [--sections scale,examples,random] [--old-src DIR]

Three sections (each prints a table; all go to ``results/plan.json``):

* ``scale``: ``edgeweave plan``'s work on generated fleets of 10 / 100 / 1,000 / 10,000
  devices (30 blocks x 4 variants x 3 codecs): each size runs in its own child process,
  which reads the fleet YAML, builds the cost tables, searches, and reports its own times and
  peak RSS. ``--old-src`` points at another source tree (e.g. the planner before the sparse
  routes) to time it in the same run as the baseline (sizes it cannot finish within
  ``--timeout`` are reported as such).
* ``examples``: the four example fleets of examples/fleets with the Llama-3.2-3B and
  Llama-3.1-8B cards, with and without a residency policy (``keep_in`` the entry's zone),
  at two quality floors (any variant; 16-bit only, where no single device holds an 8B
  model): per-token latency of our plan vs memory-proportional, Neurosurgeon, best single
  device and all-cloud.
* ``random``: the older comparison on 120 random small fleets (below).

Fleets of 3-12 devices drawn from the device catalog (entry on a low-tier device, a LAN of
Wi-Fi/BLE/Ethernet links around a gateway, a cloud GPU behind fibre/LTE/5G in some of them),
the bundled SmolLM2-135M shape (30 blocks) and the four default variants. For each fleet the
predicted per-token latency of our plan and of every baseline (same cost model, same
constraints) is compared; planning time is measured on 32-device fleets (30 blocks x 4
variants x 3 codecs). Prints a table and writes ``results/plan.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from edgeweave.errors import PlanningError
from edgeweave.models.config import ModelConfig
from edgeweave.paths import atomic_write_json
from edgeweave.plan.baselines import BASELINES, baseline_tables
from edgeweave.plan.partition import place_tables, tables_for
from edgeweave.profile import catalog, probe
from edgeweave.profile.cost import UNCALIBRATED, ModelCosts
from edgeweave.types import Fleet, FleetDevice, Link

SMOL = ModelConfig(family="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                   num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
                   tie_word_embeddings=True)
# SmolLM2-1.7B's published shape (config.json of HuggingFaceTB/SmolLM2-1.7B): 6.8 GB in fp32,
# so memory binds on edge devices and splits become necessary.
SMOL_17B = ModelConfig(family="llama", vocab_size=49152, hidden_size=2048,
                       intermediate_size=8192, num_layers=24, num_heads=32, num_kv_heads=32,
                       head_dim=64, tie_word_embeddings=True)
# name -> (model, minimum quality, constrained): constrained fleets have no cloud and only
# small devices (Pis, phones, MCUs, a Pi 4 as gateway), so a 16-bit 1.7B model must be split.
SCENARIOS = {
    "smollm2-135m": (SMOL, 0.0, False),
    "smollm2-1.7b-q0.99": (SMOL_17B, 0.99, False),  # quality floor: fp32/fp16/int8 only
    "smollm2-1.7b-q0.999-small-devices": (SMOL_17B, 0.999, True),  # fp32/fp16 only
}
LOW = ["esp32-s3", "rpi-zero-2w", "rpi4-4gb", "rpi5-8gb", "phone-midrange", "phone-flagship"]
MID = ["rpi4-4gb", "rpi5-8gb", "phone-midrange", "phone-flagship", "minipc-n100", "laptop-m2",
       "jetson-orin-nano-8gb", "edge-server-l4", "rpi-zero-2w", "esp32-s3"]
LAN = ["wifi4", "wifi5", "wifi6", "ethernet", "ble"]
WAN = ["fiber-wan", "lte", "5g"]


def make_fleet(rng: random.Random, n: int, name: str, constrained: bool = False) -> Fleet:
    """Entry on a low-tier device; a gateway; others on the LAN; maybe a cloud GPU."""
    dev = catalog.device
    gateways = ["rpi4-4gb"] if constrained else ["minipc-n100", "rpi5-8gb", "rpi4-4gb"]
    devices = [FleetDevice("entry", dev(rng.choice(LOW)),
                           battery=rng.choice([None, rng.uniform(0.1, 1.0)])),
               FleetDevice("gw", dev(rng.choice(gateways)))]
    links = [Link("entry", "gw", catalog.link(rng.choice(LAN)), rng.uniform(0.5, 1.0))]
    has_cloud = not constrained and rng.random() < 0.5
    for k in range(n - 2 - has_cloud):
        cls = rng.choice(LOW if constrained else MID)
        battery = rng.uniform(0.05, 1.0) if cls.startswith(("phone", "esp32", "laptop")) else None
        did = f"n{k}"
        devices.append(FleetDevice(did, dev(cls), battery=battery,
                                   memory_pressure=rng.choice([0.0, 0.0, rng.uniform(0, 0.8)])))
        peer = rng.choice([d.id for d in devices[:-1]]) if rng.random() < 0.3 else "gw"
        links.append(Link(peer, did, catalog.link(rng.choice(LAN)), rng.uniform(0.4, 1.0)))
    if has_cloud:
        devices.append(FleetDevice("cloud", dev("cloud-a100-80gb")))
        links.append(Link("gw", "cloud", catalog.link(rng.choice(WAN)), rng.uniform(0.5, 1.0)))
    return Fleet(name, tuple(devices), tuple(links), "entry", "entry")


def run(n_fleets: int, seed: int, big: int, scenario: str, calibrated: bool = False) -> dict:
    rng = random.Random(seed)
    hp = probe.load_cached() if calibrated else None
    cal = hp.calibration() if hp else UNCALIBRATED
    cfg, min_q, constrained = SCENARIOS[scenario]
    model = ModelCosts.from_config(cfg, scenario)
    rows, skipped = [], 0
    for f in range(n_fleets):
        fleet = make_fleet(rng, rng.randint(3, 12), f"fleet{f}", constrained)
        t = tables_for(model, fleet, calibration=cal, min_quality=min_q)
        t0 = time.perf_counter()
        try:
            ours = place_tables(t, "latency")
        except PlanningError:
            skipped += 1
            continue
        row = {"fleet": f, "devices": t.n, "plan_ms": (time.perf_counter() - t0) * 1e3,
               "ours": ours.predicted["per_token_s"], "stages": len(ours.stages),
               "variants": sorted({s.variant for s in ours.stages})}
        for b in BASELINES:
            try:
                p = baseline_tables(t, b, "latency")
                row[b] = p.predicted["per_token_s"] if p.predicted["feasible"] else None
            except PlanningError:
                row[b] = None
        rows.append(row)
    # planning time at the size: 32 devices x 30 blocks x 4 variants
    times = []
    for k in range(big):
        fleet = make_fleet(rng, 32, f"big{k}", constrained)
        t0 = time.perf_counter()
        t = tables_for(model, fleet, calibration=cal, min_quality=min_q)
        place_tables(t, "latency")
        times.append((time.perf_counter() - t0) * 1e3)
    return {"rows": rows, "skipped": skipped, "big_ms": times, "calibration": cal.source,
            "scenario": scenario, "blocks": model.n_layers, "min_quality": min_q}


def summarize(res: dict) -> dict:
    rows = res["rows"]
    print(f"== {res['scenario']}: {len(rows)} fleets")
    out: dict = {"fleets": len(rows), "infeasible_fleets": res["skipped"],
                 "calibration": res["calibration"]}
    print(f"{'baseline':14s} {'fleets':>6s} {'ours<=':>7s} {'median ours/base':>17s} "
          f"{'median reduction':>17s} {'infeasible':>10s} {'ratio|split':>12s}")
    for b in BASELINES:
        pairs = [(r["ours"], r[b]) for r in rows if r[b] is not None]
        ratios = [o / x for o, x in pairs]
        wins = sum(o <= x * (1 + 1e-9) for o, x in pairs)
        med = statistics.median(ratios) if ratios else float("nan")
        split = [r["ours"] / r[b] for r in rows if r[b] is not None and r["stages"] > 1]
        out[b] = {"compared": len(pairs), "ours_le_baseline": wins,
                  "median_ratio_where_we_split": statistics.median(split) if split else None,
                  "median_ratio": med, "median_reduction": 1 - med,
                  "baseline_infeasible": sum(r[b] is None for r in rows),
                  "min_ratio": min(ratios, default=float("nan")),
                  "max_ratio": max(ratios, default=float("nan"))}
        sm = out[b]["median_ratio_where_we_split"]
        print(f"{b:14s} {len(pairs):6d} {wins:7d} {med:17.3f} {1 - med:17.1%} "
              f"{out[b]['baseline_infeasible']:10d} {'-' if sm is None else f'{sm:.3f}':>12s}")
    big = res["big_ms"]
    out["planning_ms_32_devices"] = {"median": statistics.median(big), "max": max(big),
                                     "runs": len(big)}
    out["planning_ms_fleets"] = {"median": statistics.median(r["plan_ms"] for r in rows),
                                 "max": max(r["plan_ms"] for r in rows)}
    out["stages_histogram"] = {str(k): sum(r["stages"] == k for r in rows)
                               for k in sorted({r["stages"] for r in rows})}
    print(f"planning time, 32 devices x {res['blocks']} blocks x 4 variants: median "
          f"{out['planning_ms_32_devices']['median']:.0f} ms, max {max(big):.0f} ms over "
          f"{len(big)} fleets (target < 200 ms)")
    print(f"planning time, 3-12 devices: median {out['planning_ms_fleets']['median']:.1f} ms; "
          f"stages in our plans: {out['stages_histogram']}")
    mem = out["memory"]
    print(f"targets: ours <= every baseline on every fleet: "
          f"{all(out[b]['ours_le_baseline'] == out[b]['compared'] for b in BASELINES)}; "
          f"median reduction vs memory-proportional {mem['median_reduction']:.1%} (target >= 30%)")
    return out


# -- scale ----------------------------------------------------------------------------------
SIZES = (10, 100, 1000, 10000)

# What each child runs: times its own phases and reads its own peak RSS. The planner API it
# calls (load_fleet, tables_for, place_tables) is the same before and after the sparse routes.
CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from edgeweave.models.config import ModelConfig
from edgeweave.plan.fleet import load_fleet
from edgeweave.plan.partition import place_tables, tables_for
from edgeweave.profile.cost import ModelCosts
import numpy
try:
    import scipy.sparse.csgraph  # noqa: F401  (the new planner's; counted as import time)
except ImportError:
    pass
t1 = time.perf_counter()
spec = load_fleet(sys.argv[1])
t2 = time.perf_counter()
if sys.argv[2].startswith("card:"):
    from edgeweave.models.cards import CARDS
    model = CARDS[sys.argv[2][5:]].costs()
else:
    model = ModelCosts.from_config(ModelConfig(**json.loads(sys.argv[2])), "smollm2-135m")
t = tables_for(model, spec.fleet, variants=spec.variants, min_quality=float(sys.argv[3]))
t3 = time.perf_counter()
plan = place_tables(t, "latency")
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "tables_s": t3 - t2,
                  "search_s": t4 - t3, "plan_s": t4 - t2, "total_s": t4 - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "stages": len(plan.stages), "per_token_ms": plan.predicted["per_token_s"] * 1e3,
                  "gap": plan.predicted.get("optimality_gap", 0.0),
                  "nodes": plan.predicted.get("search_nodes")}))
"""


def fleet_doc(fleet: Fleet) -> dict:
    """A fleet as the YAML document a user would write."""
    devices = {}
    for d in fleet.devices:
        e: dict = {"class": d.profile.name}
        if d.battery is not None:
            e["battery"] = round(d.battery, 3)
        if d.memory_pressure:
            e["memory_pressure"] = round(d.memory_pressure, 3)
        devices[d.id] = e
    return {"name": fleet.name, "entry": fleet.entry, "exit": fleet.exit, "devices": devices,
            "links": [{"a": ln.a, "b": ln.b, "class": ln.profile.name,
                       "bandwidth_scale": round(ln.bandwidth_scale, 3)} for ln in fleet.links]}


# (name, constrained fleet, model argument, minimum quality): the generated fleets
# with the bundled 30-block shape, and fleets of small devices only (no cloud, Pis, phones,
# MCUs) where a 16-bit Llama-3.1-8B fits no device and must be split
SCALE_CASES = (("generated, smollm2-135m", False, None, 0.0),
               ("small devices, llama-3.1-8b fp16", True, "card:llama-3.1-8b", 0.999))


def run_child(src: str, fleet_file: Path, timeout: float, model: str | None = None,
              min_quality: float = 0.0) -> dict:
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    cfg = model or json.dumps({k: v for k, v in SMOL.to_dict().items() if k != "rope_scaling"})
    t0 = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, str(fleet_file), cfg,
                              str(min_quality)], env=env,
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"timed_out": True, "wall_s": time.perf_counter() - t0}
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1:], "wall_s": time.perf_counter() - t0}
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "wall_s": time.perf_counter() - t0}


def run_scale(sizes: tuple[int, ...], seed: int, old_src: str | None, timeout: float) -> dict:
    here = str(Path(__file__).resolve().parents[1] / "src")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case, constrained, model, q in SCALE_CASES:
            print(f"-- {case}")
            for n in sizes:
                fleet = make_fleet(random.Random(seed + n), n, f"gen{n}", constrained)
                path = Path(tmp) / f"gen{n}-{constrained}.yaml"
                path.write_text(yaml.safe_dump(fleet_doc(fleet), sort_keys=False))
                row = {"case": case, "devices": n, "links": len(fleet.links),
                       "new": run_child(here, path, timeout, model, q)}
                if old_src and model is None:  # the old planner has no model cards
                    row["old"] = run_child(old_src, path, timeout, model, q)
                rows.append(row)
                _print_scale_row(row)
    return {"rows": rows, "targets": {"1000_devices_plan_s": 1.0, "10000_devices_plan_s": 10.0,
                                      "peak_rss_mb": 1024}}


def _fmt(r: dict, key: str, scale: float = 1.0, f: str = "{:.2f}") -> str:
    if r.get("timed_out"):
        return f"> {r['wall_s']:.0f} s"
    if "error" in r:
        return "error"
    return f.format(r[key] * scale)


def _print_scale_row(row: dict) -> None:
    if row["devices"] == SIZES[0]:
        print(f"{'devices':>8s} {'load s':>8s} {'tables s':>9s} {'search s':>9s} {'plan s':>8s} "
              f"{'RSS MB':>8s} {'stages':>6s} {'gap':>6s} {'old plan s':>11s} {'old RSS':>8s}")
    new, old = row["new"], row.get("old", {})
    print(f"{row['devices']:8d} {_fmt(new, 'load_s'):>8s} {_fmt(new, 'tables_s'):>9s} "
          f"{_fmt(new, 'search_s'):>9s} {_fmt(new, 'plan_s'):>8s} "
          f"{_fmt(new, 'peak_rss_mb', f='{:.0f}'):>8s} {new.get('stages', '-')!s:>6s} "
          f"{_fmt(new, 'gap', 100, '{:.1f}%'):>6s} "
          f"{(_fmt(old, 'plan_s') if old else '-'):>11s} "
          f"{(_fmt(old, 'peak_rss_mb', f='{:.0f}') if old else '-'):>8s}")


# -- example fleets ------------------------------------------------------------------------
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "fleets"
EXAMPLE_FLEETS = ("smart-home", "factory", "personal", "farm")
EXAMPLE_MODELS = ("llama-3.2-3b", "llama-3.1-8b")
# the farm's zone (8 x 380 MB) holds no 3B model: its own row, with a 1B one
EXTRA = (("farm", "llama-3.2-1b"),)
QUALITY = {"any": 0.0, "16-bit": 0.999}


def run_examples() -> dict:
    from dataclasses import replace

    from edgeweave.models.cards import CARDS
    from edgeweave.plan.fleet import load_fleet
    from edgeweave.types import Policy

    rows = []
    print(f"{'fleet':11s} {'model':13s} {'weights':7s} {'policy':12s} {'ours ms':>8s} "
          + " ".join(f"{b:>13s}" for b in BASELINES) + "  stages")
    cases = [(f, m) for f in EXAMPLE_FLEETS for m in EXAMPLE_MODELS] + list(EXTRA)
    for fname, mname in cases:
        spec = load_fleet(EXAMPLES / f"{fname}.yaml")
        zone = spec.fleet.device(spec.fleet.entry).zone
        model = CARDS[mname].costs()
        for qname, q in QUALITY.items():
            for pname, pol in (("none", Policy()), (f"keep {zone}", Policy(keep_in=zone))):
                fleet = replace(spec.fleet, policy=pol)
                row: dict = {"fleet": fname, "model": mname, "weights": qname,
                             "policy": pname}
                t0 = time.perf_counter()
                try:
                    t = tables_for(model, fleet, variants=spec.variants, min_quality=q)
                    ours = place_tables(t, "latency")
                except PlanningError as e:
                    row["error"] = str(e)
                    rows.append(row)
                    print(f"{fname:11s} {mname:13s} {qname:7s} {pname:12s} {'no plan':>8s}")
                    continue
                row.update(plan_ms=(time.perf_counter() - t0) * 1e3,
                           ours_ms=ours.predicted["per_token_s"] * 1e3,
                           stages=[[s.device, s.shard.start, s.shard.end, s.variant]
                                   for s in ours.stages],
                           cost_per_mtok=ours.predicted["cost_per_mtok"])
                cells = []
                for b in BASELINES:
                    p = baseline_tables(t, b, "latency")
                    ok = bool(p.predicted["feasible"])
                    ms = p.predicted["per_token_s"] * 1e3
                    row[b] = {"ms": ms if ok else None, "feasible": ok,
                              "ours_over_base": row["ours_ms"] / ms if ok else None}
                    cells.append(f"{ms:8.4g} ({row['ours_ms'] / ms:.2f})" if ok
                                 else f"{'infeasible':>13s}")
                rows.append(row)
                print(f"{fname:11s} {mname:13s} {qname:7s} {pname:12s} {row['ours_ms']:8.4g} "
                      + " ".join(f"{c:>13s}" for c in cells)
                      + "  " + " ".join(f"{d}[{i},{j})" for d, i, j, _ in row["stages"]))
    print("(baseline cells: ms per token (ours / baseline); infeasible: it does not fit or "
          "breaks the policy)")
    return {"rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="scale,examples,random")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--old-src", default=None,
                    help="another source tree to time at the same sizes (the baseline)")
    ap.add_argument("--timeout", type=float, default=300.0, help="per child process, s")
    ap.add_argument("--fleets", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--big", type=int, default=10, help="32-device fleets to time")
    ap.add_argument("--out", default="results/plan.json")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--calibrated", action="store_true",
                    help="apply the cached host calibration (default: catalog figures as is, "
                         "so results do not depend on how busy the host was when probed)")
    a = ap.parse_args()
    out: dict = {"args": vars(a)}
    sections = a.sections.split(",")
    if "scale" in sections:
        print("== planning time and peak RSS on generated fleets (30 blocks x 4 variants)")
        out["scale"] = run_scale(tuple(int(x) for x in a.sizes.split(",")), a.seed,
                                 a.old_src, a.timeout)
    if "examples" in sections:
        print("== example fleets: per-token latency, ours vs baselines")
        out["examples"] = run_examples()
    if "random" in sections:
        for sc in a.scenarios.split(","):
            res = run(a.fleets, a.seed, a.big, sc, a.calibrated)
            out[sc] = {"summary": summarize(res), "rows": res["rows"],
                       "planning_ms_32_devices": res["big_ms"]}
    atomic_write_json(Path(a.out), out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
