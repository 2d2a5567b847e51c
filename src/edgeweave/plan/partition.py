"""The optimal planner: ordered stages (device, [start, end), variant, codec) minimising an
objective under memory, battery and quality constraints.

Exact search in two layers:

1. A dynamic programme over (layer boundary x device) gives, for every boundary ``j`` and
   device ``d`` that ran the stage ending at ``j``, the cheapest way ``B[j][d]`` to finish
   the model. Variants and codecs are folded in exactly: a stage's variant changes only that
   stage's cost and memory, a codec only its outgoing hop, so the best of each is a
   minimum taken once per (device, range) and per (device pair).
2. The DP lets a device appear twice, which a pipeline cannot do (its memory is shared).
   A depth-first branch and bound over distinct devices, ordered and pruned by ``B``
   (an admissible bound: relaxing a constraint never raises the optimum), returns the true
   optimum; when the DP's own plan uses distinct devices it is found first and proves
   itself optimal, which is the usual case.

Throughput (minimise the slowest stage or link) runs the same search with ``max`` in place
of ``+``; a second pass then minimises per-token latency among plans whose every stage and
link stays within that bottleneck, so ties are broken towards the fastest plan. The
bottleneck objective has many ties and a weaker bound: it is the slowest to plan (seconds
on an 8-device fleet, against milliseconds for the additive objectives).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgeweave.errors import PlanningError
from edgeweave.plan import objectives as O
from edgeweave.plan.objectives import OBJECTIVES, evaluate, make_plan
from edgeweave.plan.tables import INF, Constraints, CostTables, build
from edgeweave.profile.cost import UNCALIBRATED, Calibration, ModelCosts, model_memory
from edgeweave.profile.variants import DEFAULT_VARIANTS, Variant
from edgeweave.types import CODECS, Fleet, Plan

NODE_BUDGET = 200_000
Part = tuple[int, int, int, int, int]  # (device, variant, start, end, codec) indices
_TOL = 1e-12

__all__ = ["OBJECTIVES", "costs_of", "place", "place_tables", "search", "tables_for"]

if TYPE_CHECKING:  # importing edgeweave.models pulls in torch
    from edgeweave.models.config import ModelConfig


def costs_of(model: ModelConfig | ModelCosts, prompt_len: int = 128,
             context: int = 512) -> ModelCosts:
    if isinstance(model, ModelCosts):
        return model
    return ModelCosts.from_config(model, prompt_len=prompt_len, context=context)


def tables_for(model: ModelConfig | ModelCosts, fleet: Fleet, *,
               variants: dict[str, Variant] | None = None, min_quality: float = 0.0,
               battery_reserve: float = 0.2, codecs: tuple[str, ...] = CODECS,
               calibration: Calibration = UNCALIBRATED, prompt_len: int = 128,
               context: int = 512) -> CostTables:
    return build(costs_of(model, prompt_len, context), fleet, variants or dict(DEFAULT_VARIANTS),
                 Constraints(min_quality, battery_reserve, codecs), calibration)


def search(t: CostTables, obj: O.Objective, cap_s: float | None = None,
           node_budget: int = NODE_BUDGET,
           penalty: np.ndarray | None = None) -> tuple[float, list[Part], bool]:
    """(optimal value, stages as (device, variant, start, end, codec), proven optimal).

    ``penalty`` (n, V, L) adds a cost per block placed on (device, variant): the adapter
    uses it to price moving layers away from where they are now."""
    n, L, op = t.n, t.L, obj.op
    SC, _ = t.stage_arrays(obj.stage_metric)  # (n, V, L+1, L+1)
    if penalty is not None:
        cum = np.concatenate([np.zeros((n, len(t.variants), 1)), np.cumsum(penalty, axis=2)], 2)
        SC = SC + np.maximum(cum[:, :, None, :] - cum[:, :, :, None], 0.0)
    H = t.hop[obj.hop_metric].copy()  # (n, n, K)
    E, Cl = obj.entry(t).astype(float), obj.close(t).astype(float)
    if cap_s is not None:  # throughput's second pass: nothing may exceed the bottleneck
        lim = cap_s * (1 + 1e-9)
        dec, _ = t.stage_arrays("decode_s")
        SC = np.where(dec <= lim, SC, INF)
        H = np.where(t.hop["decode_s"] <= lim, H, INF)
        Cl = np.where(t.tok["decode_s"] <= lim, Cl, INF)
    if H.shape[2] == 0:
        H = np.full((n, n, 1), INF)
    vbest, S = SC.argmin(axis=1), SC.min(axis=1)  # (n, L+1, L+1)
    cbest, Hb = H.argmin(axis=2), H.min(axis=2)
    np.fill_diagonal(Hb, INF)  # consecutive stages run on different devices
    # B[k][d]: cheapest finish of blocks [k, L) after a stage on d ended at k (DP, relaxed)
    B = np.full((L + 1, n), INF)
    B[L] = 0.0
    for j in range(L - 1, 0, -1):
        U = op(S[:, j, :], B.T).min(axis=1)  # (n,) best stage starting at j on each device
        B[j] = op(Hb, U[None, :]).min(axis=1)
    # The longest stage each device can hold (memory, cap): with every device used at most
    # once, blocks left must fit into the devices left, a check the DP above cannot make.
    idx = np.arange(max(L, n) + 1)
    span = np.where(np.isfinite(S), idx[None, None, :L + 1] - idx[None, :L + 1, None], 0)
    maxlen = span.reshape(n, -1).max(axis=1).astype(float)
    best = [INF, [], True]
    nodes = [0]
    if maxlen.sum() < L:
        return INF, [], True
    # Per-block cost of each device at its cheapest variant: with each device used once, the
    # blocks left cost at least a fractional knapsack over the free devices (cheapest first,
    # each up to its longest stage). It sees what the DP cannot (devices are not reusable);
    # the search takes the larger of the two bounds. Sums only: a bottleneck has no knapsack.
    per_blk = np.where(t.ok, t.blk[obj.stage_metric], INF).min(axis=1)
    knap = obj.combine == "sum"

    def knapsack(free: np.ndarray) -> np.ndarray:
        """(L+1,) lower bound on the cost of r = 0..L more blocks on the free devices."""
        order = np.argsort(np.where(free, per_blk, INF))
        cost, cap = per_blk[order], np.where(free[order], maxlen[order], 0.0)
        ok = np.isfinite(cost) & (cap > 0)
        cost, cap = cost[ok], cap[ok]
        out = np.full(L + 1, INF)
        out[0] = 0.0
        if cap.size:
            edges = np.concatenate([[0.0], np.cumsum(cap)])
            base = np.concatenate([[0.0], np.cumsum(cost * cap)])
            r = np.arange(1, L + 1, dtype=float)
            k = np.minimum(np.searchsorted(edges, r, side="left") - 1, cap.size - 1)
            fill = base[k] + (r - edges[k]) * cost[k]
            out[1:] = np.where(r <= edges[-1], fill, INF)
        return out

    seen: dict[tuple[int, int, int], list[tuple[float, int]]] = {}

    def expand(j: int, d: int, f: int, used: int, free: np.ndarray, g: float,
               path: list[tuple[int, int]]) -> None:
        if j:  # dominance: an earlier visit here with a subset of devices and no higher cost
            labels = seen.setdefault((j, d, f), [])
            if any(g0 <= g and not u0 & ~used for g0, u0 in labels):
                return
            labels.append((g, used))
        nodes[0] += 1
        if nodes[0] > node_budget:
            best[2] = False
            return
        val = op(E[:, None], S[:, 0, :]) if j == 0 else op(g, op(Hb[d][:, None], S[:, j, :]))
        bnd = op(val, B.T)  # (n, L+1)
        bnd[:, L] = op(val[:, L], Cl[idx[:n], idx[:n]] if j == 0 else Cl[:, f])
        bnd[~free] = INF
        # after a stage on d2 ends at k, the other free devices must hold blocks [k, L)
        room = maxlen[free].sum() - maxlen  # (n,) for d2 free
        bnd[room[:, None] < (L - idx[:L + 1])[None, :]] = INF
        if knap:
            rest = knapsack(free)[::-1]  # rest[k]: blocks [k, L) on the free devices
            nxt = np.where(free[None, :], Hb, INF).min(axis=1)  # at least one more hop
            kb = val + rest[None, :] + np.where(idx[None, :L + 1] < L, nxt[:, None], 0.0)
            kb[:, L] = bnd[:, L]
            bnd = np.maximum(bnd, kb)
        cand = np.flatnonzero(bnd < best[0] * (1 - _TOL))
        for flat in cand[np.argsort(bnd.flat[cand], kind="stable")]:
            b = bnd.flat[flat]
            if not b < best[0] * (1 - _TOL):
                break
            d2, k = divmod(int(flat), L + 1)
            if k == L:
                best[0], best[1] = float(b), [*path, (d2, k)]
            else:
                nf = free.copy()
                nf[d2] = False
                expand(k, d2, d2 if j == 0 else f, used | (1 << d2), nf, float(val[d2, k]),
                       [*path, (d2, k)])
            if nodes[0] > node_budget:
                return

    expand(0, -1, -1, 0, np.ones(n, dtype=bool), 0.0, [])
    parts, start = [], 0
    for idx, (d, k) in enumerate(best[1]):
        nxt = best[1][idx + 1][0] if idx + 1 < len(best[1]) else None
        c = int(cbest[d, nxt]) if nxt is not None else -1
        parts.append((d, int(vbest[d, start, k]), start, k, c))
        start = k
    return best[0], parts, bool(best[2])


def _no_plan(t: CostTables) -> PlanningError:
    usable = [d for d in t.devices if d not in t.excluded]
    smallest = min(t.variants, key=lambda v: v.bytes_per_weight)
    need = model_memory(t.model, smallest)
    lines = [f"{d}: {r}" for d, r in t.excluded.items()]
    if usable:
        cap = {d: t.cap[t.devices.index(d)] for d in usable}
        listed = ", ".join(f"{d} {c / 1e6:.0f} MB" for d, c in sorted(cap.items(),
                                                                       key=lambda x: -x[1]))
        lines.append(f"free memory of the usable devices: {listed} "
                     f"({sum(cap.values()) / 1e6:.0f} MB together)")
    return PlanningError(
        f"model {t.model.name!r} fits nowhere in fleet {t.fleet.name!r}: it needs "
        f"{need / 1e6:.0f} MB even as {smallest.name} (weights + KV cache for "
        f"{t.model.context} tokens). " + "; ".join(lines)
        + ". Add a device with more memory, allow a smaller variant, lower min_quality, "
          "or shorten the context")


def _left_out(t: CostTables, plan: Plan, metric: str) -> tuple[str, ...]:
    used = {s.device for s in plan.stages}
    notes = []
    per_blk = np.where(t.ok, t.blk[metric], INF)
    used_idx = [t.devices.index(d) for d in used]
    ref = float(np.min(per_blk[used_idx]))
    for k, d in enumerate(t.devices):
        if d in used:
            continue
        if d in t.excluded:
            notes.append(f"{d} left out: {t.excluded[d]}")
            continue
        v = int(np.argmin(per_blk[k]))
        hop = min(float(t.hop["decode_s"][u, k].min()) for u in used_idx)
        unit, scale = ("ms", 1e3) if metric.endswith("_s") else ("mJ", 1e3)
        notes.append(f"{d} left out: feasible but not on the optimal path (one block: "
                     f"{per_blk[k, v] * scale:.3g} {unit} as {t.variants[v].name} vs "
                     f"{ref * scale:.3g} {unit} on the plan's best device; one hop from the "
                     f"plan: {hop * 1e3:.3g} ms)")
    return tuple(notes)


def place_tables(t: CostTables, objective: str = "latency") -> Plan:
    obj = O.get(objective)
    value, parts, proven = search(t, obj)
    if not np.isfinite(value):
        raise _no_plan(t)
    if obj.combine == "max":  # among plans with the optimal bottleneck, the fastest per token
        v2, p2, proven2 = search(t, O.get("latency"), cap_s=value)
        if np.isfinite(v2):
            parts, proven = p2, proven and proven2
    notes: tuple[str, ...] = ()
    if not proven:
        notes += (f"search stopped at {NODE_BUDGET} nodes: best plan found, optimality not proven",)
    plan = make_plan(t, parts, objective)
    notes += _left_out(t, plan, obj.stage_metric)
    return make_plan(t, parts, objective, notes)


def place(model: ModelConfig | ModelCosts, fleet: Fleet, objective: str = "latency", *,
          variants: dict[str, Variant] | None = None, min_quality: float = 0.0,
          battery_reserve: float = 0.2, codecs: tuple[str, ...] = CODECS,
          calibration: Calibration = UNCALIBRATED, prompt_len: int = 128,
          context: int = 512) -> Plan:
    """The optimal plan of ``model`` on ``fleet`` for ``objective`` (see :data:`OBJECTIVES`).

    ``Plan.predicted`` holds every predicted figure (per-token latency, TTFT, energy per
    token, bottleneck and throughput, memory use, quality); ``Plan.notes`` says why each
    device not in the plan was left out. Raises :class:`PlanningError` when nothing fits.
    """
    O.get(objective)
    t = tables_for(model, fleet, variants=variants, min_quality=min_quality,
                   battery_reserve=battery_reserve, codecs=codecs, calibration=calibration,
                   prompt_len=prompt_len, context=context)
    return place_tables(t, objective)


def value(plan: Plan, t: CostTables) -> float:
    """The plan's objective value (what ``place`` minimises)."""
    return evaluate(plan, t)[O.get(plan.objective).key]
