"""Objectives (a registry keyed by name) and the evaluation of any plan on cost tables.

An objective says which metric a stage and a hop cost, how costs combine along the pipeline
(``sum`` for latency, TTFT and energy; ``max`` for throughput, whose pipeline rate is set by
its slowest stage or link) and what the request's entry and the token's return cost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgeweave.errors import ConfigError
from edgeweave.plan.tables import COST, INF, CostTables
from edgeweave.profile.variants import CODEC_QUALITY
from edgeweave.types import Plan, Shard, Stage

OBJECTIVES: dict[str, Objective] = {}


@dataclass(frozen=True)
class Objective:
    name: str
    stage_metric: str
    hop_metric: str
    combine: str  # "sum" or "max"
    key: str  # the entry of Plan.predicted this objective minimises
    entry: Callable[[CostTables], np.ndarray]  # (n,) cost of reaching the first device
    # (n,) cost after the last stage, for every last device, given the first device's index
    close: Callable[[CostTables, int], np.ndarray]
    close_self: Callable[[CostTables], np.ndarray]  # (n,) the same when last == first
    doc: str = ""

    @property
    def op(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        return np.add if self.combine == "sum" else np.maximum


def register(obj: Objective) -> Objective:
    OBJECTIVES[obj.name] = obj
    return obj


def get(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def _zeros(t: CostTables) -> np.ndarray:
    return np.zeros(t.n)


# The next token's id goes from the last stage back to the first (autoregression): that hop
# is on the per-token critical path. For TTFT the prompt's ids travel from the entry to the
# first stage and the first token from the last stage to the exit.
register(Objective("latency", "decode_s", "decode_s", "sum", "per_token_s", _zeros,
                   lambda t, f: t.tok_col("decode_s", f), _zeros, "seconds per generated token"))
register(Objective("ttft", "prefill_s", "prefill_s", "sum", "ttft_s",
                   lambda t: t.tok_row("prefill_s", t.entry),
                   lambda t, f: t.tok_col("decode_s", t.exit),
                   lambda t: t.tok_col("decode_s", t.exit), "time to the first token at the exit"))
register(Objective("energy", "energy_j", "energy_j", "sum", "energy_per_token_j", _zeros,
                   lambda t, f: t.tok_col("energy_j", f), _zeros,
                   "joules per generated token, all devices"))
register(Objective("cost", COST, COST, "sum", "cost_per_mtok", _zeros,
                   lambda t, f: t.tok_col(COST, f), _zeros,
                   "price per million tokens (devices' price_per_mtok, pro rata to the blocks "
                   "each runs); ties go to the fastest plan"))
register(Objective("throughput", "decode_s", "decode_s", "max", "bottleneck_s", _zeros,
                   lambda t, f: t.tok_col("decode_s", f), _zeros,
                   "pipelined tokens/s of concurrent streams = 1 / slowest stage or link"))


def stage_indices(plan: Plan, t: CostTables) -> list[tuple[int, int, int, int, int]]:
    """(device, variant, start, end, codec) indices of each stage."""
    vnames = [v.name for v in t.variants]
    out = []
    for s in plan.stages:
        if s.device not in t.index:
            raise ConfigError(f"plan stage on {s.device!r}, which is not in the fleet")
        if s.variant not in vnames:
            raise ConfigError(f"plan stage variant {s.variant!r} is not one of {vnames}")
        codec = t.codecs.index(s.codec) if s.codec in t.codecs else -1
        out.append((t.index[s.device], vnames.index(s.variant), s.shard.start,
                    s.shard.end, codec))
    return out


def evaluate(plan: Plan, t: CostTables) -> dict[str, float]:
    """Every predicted figure of ``plan``; ``feasible`` is 0 when a constraint is broken."""
    st = stage_indices(plan, t)
    L = t.L
    feasible = len({d for d, *_ in st}) == len(st)
    comp = {m: 0.0 for m in ("decode_s", "prefill_s", "energy_j")}
    link = {m: 0.0 for m in comp}
    bottleneck, mem_util, wire, cost = 0.0, 0.0, 0.0, 0.0
    quality = 1.0
    for k, (d, v, i, j, c) in enumerate(st):
        n_blk = j - i
        for m in comp:
            x = n_blk * t.blk[m][d, v] + (i == 0) * t.first[m][d, v] + (j == L) * t.last[m][d, v]
            comp[m] += x
            if m == "decode_s":
                bottleneck = max(bottleneck, x)
        mem = (n_blk * t.mem_blk[d, v] + (i == 0) * t.mem_first[d, v]
               + (j == L) * t.mem_last[d, v] + t.mem_stage
               - (i == 0 and j == L) * t.mem_shared[d, v])
        mem_util = max(mem_util, mem / t.cap[d])
        feasible &= bool(t.ok[d, v]) and mem <= t.cap[d]
        cost += n_blk * float(t.price_blk[d])
        if (i == 0 or j == L) and not t.can_end[d]:  # tokens would leave the policy's zone
            feasible = False
        quality = min(quality, t.variants[v].quality)
        if k + 1 < len(st):
            if c < 0:
                feasible = False
                continue
            d2 = st[k + 1][0]
            for m in link:
                link[m] += t.hop(m, c, d, d2)
            bottleneck = max(bottleneck, t.hop("decode_s", c, d, d2))
            wire += t.model.activation_bytes(t.codecs[c])
            quality = min(quality, CODEC_QUALITY[t.codecs[c]])
    first, last = st[0][0], st[-1][0]
    back = t.tok("decode_s", last, first)
    per_token = comp["decode_s"] + link["decode_s"] + back
    ttft = (t.tok("prefill_s", t.entry, first) + comp["prefill_s"] + link["prefill_s"]
            + t.tok("decode_s", last, t.exit))
    energy = comp["energy_j"] + link["energy_j"] + t.tok("energy_j", last, first)
    bottleneck = max(bottleneck, back)
    feasible &= bool(np.isfinite(per_token)) and bool(np.isfinite(ttft))
    if t.policy.max_cost_per_mtok is not None:
        feasible &= cost <= t.policy.max_cost_per_mtok * (1 + 1e-9) + 1e-15
    return {
        "per_token_s": float(per_token), "ttft_s": float(ttft),
        "energy_per_token_j": float(energy), "bottleneck_s": float(bottleneck),
        "throughput_tps": float(1.0 / bottleneck) if bottleneck > 0 else INF,
        "compute_s": float(comp["decode_s"]), "transfer_s": float(link["decode_s"] + back),
        "wire_bytes_per_token": float(wire), "max_memory_util": float(mem_util),
        "quality": float(quality), "stages": float(len(st)), "feasible": float(feasible),
        "cost_per_mtok": float(cost),
    }


def make_plan(t: CostTables, parts: list[tuple[int, int, int, int, int]], objective: str,
              notes: tuple[str, ...] = ()) -> Plan:
    """Plan from (device, variant, start, end, codec) indices, with its predictions."""
    stages = tuple(Stage(t.devices[d], Shard(i, j, t.L), t.variants[v].name,
                         t.codecs[c] if c >= 0 else "fp32") for d, v, i, j, c in parts)
    plan = Plan(stages=stages, objective=objective, notes=notes)
    return Plan(stages=stages, objective=objective, predicted=evaluate(plan, t), notes=notes)
