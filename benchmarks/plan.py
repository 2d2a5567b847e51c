"""Planner benchmark: our plan vs the baselines on generated heterogeneous fleets.

    .venv/bin/python benchmarks/plan.py [--fleets 120] [--seed 0]    (about 20 s of CPU)

Fleets of 3-12 devices drawn from the device catalog (entry on a low-tier device, a LAN of
Wi-Fi/BLE/Ethernet links around a gateway, a cloud GPU behind fibre/LTE/5G in some of them),
the bundled SmolLM2-135M shape (30 blocks) and the four default variants. For each fleet the
predicted per-token latency of our plan and of every baseline (same cost model, same
constraints) is compared; planning time is measured on 32-device fleets (30 blocks x 4
variants x 3 codecs). Prints a table and writes ``results/plan.json``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fleets", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--big", type=int, default=10, help="32-device fleets to time")
    ap.add_argument("--out", default="results/plan.json")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--calibrated", action="store_true",
                    help="apply the cached host calibration (default: catalog figures as is, "
                         "so results do not depend on how busy the host was when probed)")
    a = ap.parse_args()
    out = {"args": vars(a)}
    for sc in a.scenarios.split(","):
        res = run(a.fleets, a.seed, a.big, sc, a.calibrated)
        out[sc] = {"summary": summarize(res), "rows": res["rows"],
                   "planning_ms_32_devices": res["big_ms"]}
    atomic_write_json(Path(a.out), out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
