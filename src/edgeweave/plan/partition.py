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
link stays within that bottleneck, so ties are broken towards the fastest plan. Cost (price
per million tokens) likewise takes the fastest of the cheapest plans; a policy's
``max_cost_per_mtok`` prunes partial plans that cannot stay under it.

At scale: hops are rows of sparse routes (:mod:`edgeweave.plan.routes`), never ``n x n``
tables; the DP's hop step is an exact multi-source Dijkstra; interchangeable devices (same
class, memory and links) are tried in index order only. The branch and bound has a work
budget (:data:`WORK_BUDGET`, node x device x boundary elements). When the budget stops it,
the plan is the best found and the search knows a proven lower bound (the least bound of the
subtrees left open): ``Plan.predicted["optimality_gap"]`` and a note say how far from optimal
the plan can be. Finished searches are exact (gap 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from edgeweave.errors import PlanningError
from edgeweave.plan import objectives as O
from edgeweave.plan.explain import left_out, no_plan
from edgeweave.plan.objectives import OBJECTIVES, evaluate, make_plan
from edgeweave.plan.tables import INF, Constraints, CostTables, build
from edgeweave.profile.cost import UNCALIBRATED, Calibration, ModelCosts
from edgeweave.profile.variants import DEFAULT_VARIANTS, Variant
from edgeweave.types import CODECS, Fleet, Plan, Policy

NODE_BUDGET = 200_000
WORK_BUDGET = 100_000_000  # node x device x boundary elements: ~4 s of numpy here
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
               context: int = 512, policy: Policy | None = None) -> CostTables:
    """``policy`` replaces the fleet's own (data residency, spending)."""
    return build(costs_of(model, prompt_len, context), fleet, variants or dict(DEFAULT_VARIANTS),
                 Constraints(min_quality, battery_reserve, codecs), calibration, policy)


@dataclass(frozen=True)
class SearchResult:
    """What the search found. ``lower_bound`` is proven: no plan is cheaper. It equals
    ``value`` when the search finished (``proven``); when the node budget stopped it, the
    optimality gap ``(value - lower_bound) / value`` is how far from optimal the plan can be."""

    value: float
    parts: list[Part]
    proven: bool
    lower_bound: float
    nodes: int

    @property
    def gap(self) -> float:
        if self.proven or not np.isfinite(self.value) or self.value <= 0:
            return 0.0
        return max(0.0, (self.value - self.lower_bound) / self.value)


def node_budget_for(n: int, L: int) -> int:
    """Nodes the branch and bound may expand: each costs O(n x L) array work, so the budget
    is a budget of work (a few seconds of numpy here), never below 200 nodes. Fleets up to
    ~100 devices keep the full NODE_BUDGET."""
    return int(max(200, min(NODE_BUDGET, WORK_BUDGET // max(1, n * (L + 1)))))


def search(t: CostTables, obj: O.Objective, cap_s: float | None = None,
           node_budget: int | None = None,
           penalty: np.ndarray | None = None) -> tuple[float, list[Part], bool]:
    """(optimal value, stages as (device, variant, start, end, codec), proven optimal).

    ``penalty`` (n, V, L) adds a cost per block placed on (device, variant): the adapter
    uses it to price moving layers away from where they are now."""
    r = search_bounded(t, obj, cap_s, node_budget, penalty)
    return r.value, r.parts, r.proven


def search_bounded(t: CostTables, obj: O.Objective, cap_s: float | None = None,
                   node_budget: int | None = None, penalty: np.ndarray | None = None,
                   max_cost: float | None = None) -> SearchResult:
    """:func:`search` with the proven lower bound and the node count. ``max_cost`` (per
    million tokens) tightens the policy's own ``max_cost_per_mtok``."""
    caps = [c for c in (max_cost, t.policy.max_cost_per_mtok) if c is not None]
    cost_cap = min(caps) * (1 + 1e-9) + 1e-15 if caps else None
    lim = None if cap_s is None else cap_s * (1 + 1e-9)
    S, vbest = t.stage_min(obj.stage_metric, penalty=penalty, cap_s=lim)  # (N, L+1, L+1)
    maxlen = longest_stages(S)
    # The search runs over the devices that can hold some stage (an exact reduction; the
    # others still relay traffic: routes stay over all N). Indices below are into ``act``.
    act = np.flatnonzero(maxlen > 0)
    if maxlen[act].sum() < t.L:  # the devices together cannot hold the model
        return SearchResult(INF, [], True, INF, 0)
    space = _Space(t, obj, act, S[act], vbest[act], maxlen[act], lim, cost_cap)
    state = _State(node_budget_for(len(act), t.L) if node_budget is None else node_budget)
    _expand(space, state, 0, -1, -1, 0, np.ones(space.n, dtype=bool), 0.0, 0.0, [])
    return state.result(space.parts(state.path))


def longest_stages(S: np.ndarray) -> np.ndarray:
    """(N,) the longest stage each device can hold (memory, cap), from the stage table
    ``S`` (N, L+1, L+1): with every device used at most once, blocks left must fit into the
    devices left, a check the DP of :meth:`_Space.finish_bounds` cannot make."""
    N, L = S.shape[0], S.shape[1] - 1
    span = (np.arange(L + 1)[None, :] - np.arange(L + 1)[:, None]).astype(np.int16)
    maxlen = np.zeros(N)
    step = max(1, 2**20 // (L + 1) ** 2)
    for lo in range(0, N, step):
        fin = np.isfinite(S[lo:lo + step])
        maxlen[lo:lo + step] = np.where(fin, span[None], 0).reshape(fin.shape[0], -1).max(axis=1)
    return maxlen


class _Space:
    """What one search reads: the cost tables reduced to the ``act`` devices (indices here
    are into ``act``), the best hops and closing costs (computed once per device, on first
    use), and the two lower bounds on finishing the model (the relaxed DP and a knapsack)."""

    def __init__(self, t: CostTables, obj: O.Objective, act: np.ndarray, S: np.ndarray,
                 vbest: np.ndarray, maxlen: np.ndarray, lim: float | None,
                 cost_cap: float | None) -> None:
        self.t, self.obj, self.op, self.act = t, obj, obj.op, act
        self.S, self.vbest, self.maxlen = S, vbest, maxlen
        self.lim, self.cost_cap = lim, cost_cap
        self.n, self.L, self.K = len(act), t.L, len(t.codecs)
        self.pb = t.price_blk[act]  # (n,) price per million tokens of one block
        self.E = np.asarray(obj.entry(t), dtype=float)[act]
        self.close_self = np.asarray(obj.close_self(t), dtype=float)[act]
        self.blocks = np.arange(self.L + 1)
        self._rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._closes: dict[int, np.ndarray] = {}
        self.minout = t.min_out_hop(obj.hop_metric)[act] if self.K else np.full(self.n, INF)
        self.B = self.finish_bounds()
        # Per-block cost of each device at its cheapest variant: with each device used once,
        # the blocks left cost at least a fractional knapsack over the free devices (cheapest
        # first, each up to its longest stage). It sees what the DP cannot (devices are not
        # reusable); the search takes the larger of the two bounds. Sums only: a bottleneck
        # has no knapsack.
        self.per_blk = np.where(t.ok, t.blk[obj.stage_metric], INF).min(axis=1)[act]
        self.knap = obj.combine == "sum"
        # interchangeable devices are used in index order (symmetry breaking)
        pos = np.full(t.n, -1)
        pos[act] = np.arange(self.n)
        twin = t.twins()[act]
        self.twin = np.where(twin >= 0, pos[np.maximum(twin, 0)], -1)
        self.has_twin = self.twin >= 0

    def hop_row(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        """(n,) the best hop from d to each device over the codecs, and which codec."""
        if d not in self._rows:
            t, obj, act, n = self.t, self.obj, self.act, self.n
            if self.K == 0:
                self._rows[d] = (np.full(n, INF), np.zeros(n, dtype=np.int64))
            else:
                R = np.stack([t.hop_row(obj.hop_metric, k, act[d])[act] for k in range(self.K)])
                if self.lim is not None:  # throughput's second pass: no link above the bottleneck
                    dec = np.stack([t.hop_row("decode_s", k, act[d])[act] for k in range(self.K)])
                    R = np.where(dec <= self.lim, R, INF)
                r = R.min(axis=0)
                r[d] = INF  # consecutive stages run on different devices
                self._rows[d] = (r, R.argmin(axis=0))
        return self._rows[d]

    def close(self, f: int) -> np.ndarray:
        """(n,) the cost of closing the plan on each device when ``f`` ran the first stage."""
        if f not in self._closes:
            c = np.asarray(self.obj.close(self.t, self.act[f]), dtype=float)[self.act]
            if self.lim is not None:
                c = np.where(self.t.tok_col("decode_s", self.act[f])[self.act] <= self.lim, c, INF)
            self._closes[f] = c
        return self._closes[f]

    def finish_bounds(self) -> np.ndarray:
        """B[k][d]: cheapest finish of blocks [k, L) after a stage on d ended at k (DP,
        relaxed: a device may come back later; the bound of the branch and bound)."""
        t, obj, op, S, L, n, act = self.t, self.obj, self.op, self.S, self.L, self.n, self.act
        B = np.full((L + 1, n), INF)
        B[L] = 0.0
        U_all = np.full(t.n, INF)
        for j in range(L - 1, 0, -1):
            U = op(S[:, j, :], B.T).min(axis=1)  # (n,) best stage starting at j on each device
            if self.K == 0:
                continue
            if obj.combine == "sum":
                U_all[act] = U
                B[j] = np.min([t.nearest_hop(obj.hop_metric, k, U_all) for k in range(self.K)],
                              axis=0)[act]
            else:  # min over d2 != d of max(hop, U[d2]) >= max(cheapest hop, best other U)
                order = np.argsort(U)[:2]
                other = np.full(n, U[order[0]])
                if n > 1:
                    other[order[0]] = U[order[1]]
                else:
                    other[:] = INF
                B[j] = np.maximum(self.minout, other)
        return B

    def knapsack(self, free: np.ndarray) -> np.ndarray:
        """(L+1,) lower bound on the cost of r = 0..L more blocks on the free devices."""
        per_blk, L = self.per_blk, self.L
        order = np.argsort(np.where(free, per_blk, INF))
        cost, cap = per_blk[order], np.where(free[order], self.maxlen[order], 0.0)
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

    def bounds(self, j: int, d: int, f: int, free: np.ndarray, g: float, gc: float
               ) -> tuple[np.ndarray, np.ndarray]:
        """(val, bnd), both (n, L+1): the cost so far plus a next stage [j, k) on each
        device, and a lower bound on every plan that continues so (INF where none may)."""
        op, S, L, maxlen, blocks = self.op, self.S, self.L, self.maxlen, self.blocks
        val = (op(self.E[:, None], S[:, 0, :]) if j == 0
               else op(g, op(self.hop_row(d)[0][:, None], S[:, j, :])))
        bnd = op(val, self.B.T)  # (n, L+1)
        bnd[:, L] = op(val[:, L], self.close_self if j == 0 else self.close(f))
        bnd[~free] = INF
        if self.has_twin.any():  # a twin may run only after the one before it is in the plan
            bnd[self.has_twin & free[np.maximum(self.twin, 0)]] = INF
        # after a stage on d2 ends at k, the other free devices must hold blocks [k, L)
        room = maxlen[free].sum() - maxlen  # (n,) for d2 free
        bnd[room[:, None] < (L - blocks)[None, :]] = INF
        if self.cost_cap is not None:  # spent so far + this stage + the cheapest rest <= the cap
            pb = self.pb
            spent = gc + pb[:, None] * np.maximum(blocks - j, 0)[None, :]
            cheapest = float(pb[free].min()) if free.any() else 0.0
            bnd[spent + cheapest * (L - blocks)[None, :] > self.cost_cap] = INF
        if self.knap:
            rest = self.knapsack(free)[::-1]  # rest[k]: blocks [k, L) on the free devices
            kb = val + rest[None, :] + np.where(blocks[None, :] < L, self.minout[:, None], 0.0)
            kb[:, L] = bnd[:, L]
            bnd = np.maximum(bnd, kb)
        return val, bnd

    def parts(self, path: list[tuple[int, int]]) -> list[Part]:
        """A path of (device, end) in ``act`` indices as stages in fleet indices, each with
        its best variant and the codec of its outgoing hop (-1 for the last)."""
        parts, start = [], 0
        for i, (d, k) in enumerate(path):
            nxt = path[i + 1][0] if i + 1 < len(path) else None
            c = int(self.hop_row(d)[1][nxt]) if nxt is not None else -1
            parts.append((int(self.act[d]), int(self.vbest[d, start, k]), start, k, c))
            start = k
        return parts


@dataclass
class _State:
    """The mutable state of one branch and bound: the best plan so far, the nodes expanded
    against the budget, and what the budget left open."""

    budget: int
    value: float = INF
    path: list[tuple[int, int]] = field(default_factory=list)
    finished: bool = True
    nodes: int = 0
    open_lb: float = INF  # the least bound among subtrees the budget left unexplored
    # (boundary, device, first device) -> (cost, price, devices used) of earlier visits
    seen: dict[tuple[int, int, int], list[tuple[float, float, int]]] = field(default_factory=dict)

    @property
    def spent(self) -> bool:
        return self.nodes > self.budget

    def dominated(self, j: int, d: int, f: int, used: int, g: float, gc: float) -> bool:
        """An earlier visit here with a subset of devices and no higher cost (else record
        this one)."""
        labels = self.seen.setdefault((j, d, f), [])
        if any(g0 <= g and c0 <= gc and not u0 & ~used for g0, c0, u0 in labels):
            return True
        labels.append((g, gc, used))
        return False

    def leave_open(self, bound: float) -> None:
        self.open_lb = min(self.open_lb, float(bound))

    def result(self, parts: list[Part]) -> SearchResult:
        proven = bool(self.finished)
        lower = self.value if proven else min(self.value, self.open_lb)
        return SearchResult(self.value, parts, proven, lower, self.nodes)


def _expand(sp: _Space, st: _State, j: int, d: int, f: int, used: int, free: np.ndarray,
            g: float, gc: float, path: list[tuple[int, int]]) -> None:
    """Try every next stage from boundary ``j`` (the last stage ran on ``d``, the first on
    ``f``; ``used`` and ``free`` say which devices are taken; ``g`` and ``gc`` are the cost
    and price so far), cheapest bound first, while it can beat the best plan found."""
    if j and st.dominated(j, d, f, used, g, gc):
        return
    st.nodes += 1
    if st.spent:
        st.finished = False
        return
    val, bnd = sp.bounds(j, d, f, free, g, gc)
    L = sp.L
    cand = np.flatnonzero(bnd < st.value * (1 - _TOL))
    for flat in cand[np.argsort(bnd.flat[cand], kind="stable")]:
        b = bnd.flat[flat]
        if not b < st.value * (1 - _TOL):
            break
        if st.spent:  # this candidate and the later (dearer) ones stay open
            st.leave_open(b)
            return
        d2, k = divmod(int(flat), L + 1)
        if k == L:
            st.value, st.path = float(b), [*path, (d2, k)]
        else:
            nf = free.copy()
            nf[d2] = False
            _expand(sp, st, k, d2, d2 if j == 0 else f, used | (1 << d2), nf,
                    float(val[d2, k]), gc + float(sp.pb[d2]) * (k - j), [*path, (d2, k)])
            if st.spent:  # its subtree was cut short
                st.leave_open(b)
                return


def place_tables(t: CostTables, objective: str = "latency") -> Plan:
    obj = O.get(objective)
    r = search_bounded(t, obj)
    if not np.isfinite(r.value) and not r.proven:
        raise PlanningError(
            f"the search stopped after {r.nodes} nodes before it found any plan of "
            f"{t.model.name!r} on fleet {t.fleet.name!r}: remove devices that cannot help "
            "(or raise edgeweave.plan.partition.WORK_BUDGET)")
    if not np.isfinite(r.value):
        raise no_plan(t)
    parts, proven, gap = r.parts, r.proven, r.gap
    nodes = r.nodes
    second = None
    if obj.combine == "max":  # among plans with the optimal bottleneck, the fastest per token
        second = search_bounded(t, O.get("latency"), cap_s=r.value)
    elif obj.key == "cost_per_mtok":  # among the cheapest plans, the fastest per token
        second = search_bounded(t, O.get("latency"), max_cost=r.value)
    if second is not None and np.isfinite(second.value):
        parts, proven = second.parts, proven and second.proven
        nodes += second.nodes
    notes: tuple[str, ...] = ()
    if t.policy.active:
        notes += (f"policy: {t.policy.describe()}",)
    if not proven:
        notes += (f"bounded search: stopped after {nodes} nodes; this plan is within "
                  f"{gap:.1%} of optimal ({obj.key} >= {r.lower_bound:.4g} for any plan)",)
    plan = make_plan(t, parts, objective)
    used = {s.device for s in plan.stages}
    notes += tuple(f"{d}: {why}" for d, why in t.restricted.items()
                   if d in used and "middle" in why)
    notes += left_out(t, plan, obj.stage_metric)
    plan = make_plan(t, parts, objective, notes)
    return replace(plan, predicted={**plan.predicted, "optimality_gap": gap,
                                    "search_nodes": float(nodes)})


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
