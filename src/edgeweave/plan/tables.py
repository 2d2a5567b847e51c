"""Cost tables of one (model, fleet, constraints): the arrays the planner searches over.

Everything the partitioner and the baselines need is precomputed here with numpy:
per device x variant the cost of one block, of the embedding (first stage) and of the head
(last stage), for each metric; memory per block and capacity per device; and why a device
cannot take part at all. Hidden-state and token hops go over the fastest route of the link
graph; those are not tables but :class:`~edgeweave.plan.routes.Routes`, one per payload
size, asked for the rows the search uses (``hop_row``, ``tok_col``, ...): an ``n x n`` table
per payload is what made 10,000 devices take minutes and gigabytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeweave.errors import ConfigError, PlanningError
from edgeweave.plan.fleet import reachable
from edgeweave.plan.routes import LinkGraph, Routes
from edgeweave.profile import cost as C
from edgeweave.profile.variants import CODEC_QUALITY, Variant
from edgeweave.types import CODECS, NO_POLICY, Fleet, Policy
from edgeweave.validate import is_number

METRICS = ("decode_s", "prefill_s", "energy_j")
COST = "cost_per_mtok"  # price per million tokens: a metric of stages only (links are free)
INF = float("inf")


@dataclass(frozen=True)
class Constraints:
    min_quality: float = 0.0  # every variant and codec used keeps at least this quality
    battery_reserve: float = 0.2  # battery devices below this level host nothing
    codecs: tuple[str, ...] = CODECS

    def __post_init__(self) -> None:
        # both are fractions: a reserve of -3 or 7 would silently mean "no limit" / "no device"
        for name, value, what in (
                ("min_quality", self.min_quality, "the fraction of the fp32 model's quality "
                 "every variant must keep, e.g. 0.95"),
                ("battery_reserve", self.battery_reserve, "the charge below which a battery "
                 "device hosts no blocks, e.g. 0.2")):
            if not is_number(value) or not 0 <= value <= 1:
                raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}: it is "
                                  f"{what} (CLI: --{name.replace('_', '-')})")
        bad = [c for c in self.codecs if c not in CODECS]
        if bad:
            raise ConfigError(f"unknown codec(s) {bad}: choose from {', '.join(CODECS)}")


@dataclass
class CostTables:
    fleet: Fleet
    model: C.ModelCosts
    variants: list[Variant]
    codecs: list[str]
    devices: list[str]
    entry: int
    exit: int
    blk: dict[str, np.ndarray]  # metric -> (n, V) per block
    first: dict[str, np.ndarray]  # metric -> (n, V) extra on the stage holding block 0
    last: dict[str, np.ndarray]  # metric -> (n, V) extra on the stage holding the last block
    mem_blk: np.ndarray  # (n, V) bytes per block
    mem_first: np.ndarray
    mem_last: np.ndarray
    cap: np.ndarray  # (n,) usable bytes
    ok: np.ndarray  # (n, V) device may run this variant
    routes: dict[str, Routes]  # payload -> routes: "decode:<codec>", "prefill:<codec>", tok, prompt
    excluded: dict[str, str] = field(default_factory=dict)  # device -> reason
    mem_stage: float = C.STAGE_RUNTIME_BYTES  # the process every stage runs in
    index: dict[str, int] = field(default_factory=dict)  # device id -> row
    # (n, V) bytes held once, not twice, by a stage with both the embedding and a tied head
    mem_shared: np.ndarray | None = None
    policy: Policy = NO_POLICY
    can_end: np.ndarray | None = None  # (n,) may run the first and the last stage (policy)
    restricted: dict[str, str] = field(default_factory=dict)  # device -> what the policy bars

    def __post_init__(self) -> None:
        if not self.index:
            self.index = {d: k for k, d in enumerate(self.devices)}
        if self.mem_shared is None:
            self.mem_shared = np.zeros_like(self.mem_first)
        if self.can_end is None:
            self.can_end = np.ones(len(self.devices), dtype=bool)
        if COST not in self.blk:  # a price per block: per_mtok / L, nothing extra at the ends
            price = np.array([d.price_per_mtok for d in self.fleet.devices]) / self.L
            V = len(self.variants)
            self.blk[COST] = np.tile(price[:, None], (1, V))
            self.first[COST] = np.zeros((len(self.devices), V))
            self.last[COST] = np.zeros((len(self.devices), V))

    def twins(self) -> np.ndarray:
        """(n,) for each device the previous device it is interchangeable with, or -1.

        Two devices are interchangeable when swapping them changes no cost: same class,
        free memory, allowed variants, policy role and price, and the same links (class,
        bandwidth scale) to the same neighbours; neither is the entry or the exit. A plan
        using one is worth exactly the plan using the other, so the search may use twins in
        index order only: the factory's six identical Pi 5s stop costing 6! orderings."""
        nbr: dict[int, list[tuple]] = {k: [] for k in range(self.n)}
        for ln in self.fleet.links:
            a, b = self.index.get(ln.a), self.index.get(ln.b)
            if a is None or b is None:
                continue
            nbr[a].append((b, ln.profile.name, ln.bandwidth_scale, "up"))
            nbr[b].append((a, ln.profile.name, ln.bandwidth_scale, "down"))
        last: dict[tuple, int] = {}
        prev = np.full(self.n, -1, dtype=np.int64)
        for k, d in enumerate(self.fleet.devices):
            if k in (self.entry, self.exit) or not self.ok[k].any():
                continue
            key = (id(d.profile), float(self.cap[k]), self.ok[k].tobytes(), bool(self.can_end[k]),
                   d.price_per_mtok, tuple(sorted(nbr[k])))
            if key in last:
                prev[k] = last[key]
            last[key] = k
        return prev

    @property
    def price_blk(self) -> np.ndarray:
        """(n,) price per million tokens of one block on each device."""
        return self.blk[COST][:, 0]

    @property
    def n(self) -> int:
        return len(self.devices)

    @property
    def L(self) -> int:  # noqa: N802 - the usual name for the number of layers
        return self.model.n_layers

    # -- stages ------------------------------------------------------------------------
    def stage_min(self, metric: str, penalty: np.ndarray | None = None,
                  cap_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(n, L+1, L+1) cheapest cost of a stage [i, j) on each device over the variants
        (inf where none fits), and which variant. ``penalty`` (n, V, L) adds a price per
        block placed on (device, variant); ``cap_s`` bars stages slower (decode) than it.

        Built in chunks of devices: a full (n, V, L+1, L+1) array is 1.2 GB at 10,000
        devices x 4 variants x 30 blocks."""
        L, n, V = self.L, self.n, len(self.variants)
        i = np.arange(L + 1)[:, None]
        j = np.arange(L + 1)[None, :]
        size = np.where(j > i, j - i, 0)[None]
        valid = (j > i)[None]
        fi, lj = (i == 0)[None], (j == L)[None]
        S = np.full((n, L + 1, L + 1), INF)
        vb = np.zeros((n, L + 1, L + 1), dtype=np.int16)
        cum = None
        if penalty is not None:
            cum = np.concatenate([np.zeros((n, V, 1)), np.cumsum(penalty, axis=2)], axis=2)
        step = max(1, 2**20 // (L + 1) ** 2)
        col = lambda a: a[:, None, None]  # noqa: E731
        for lo in range(0, n, step):
            sl = slice(lo, min(n, lo + step))
            cap = col(self.cap[sl])
            for v in range(V):
                mem = (size * col(self.mem_blk[sl, v]) + fi * col(self.mem_first[sl, v])
                       + lj * col(self.mem_last[sl, v]) + self.mem_stage
                       - (fi & lj) * col(self.mem_shared[sl, v]))
                feas = valid & (mem <= cap) & col(self.ok[sl, v])
                end = col(self.can_end[sl])  # the policy: tokens enter and leave in the zone
                feas &= (~fi | end) & (~lj | end)

                cost = self._stage_cost(metric, sl, v, size, fi, lj)
                if cum is not None:
                    c = cum[sl, v]
                    cost = cost + np.maximum(c[:, None, :] - c[:, :, None], 0.0)
                if cap_s is not None:
                    feas &= self._stage_cost("decode_s", sl, v, size, fi, lj) <= cap_s
                cost = np.where(feas, cost, INF)
                better = cost < S[sl]
                S[sl] = np.where(better, cost, S[sl])
                vb[sl] = np.where(better, v, vb[sl])
        return S, vb

    def _stage_cost(self, m: str, sl: slice, v: int, size: np.ndarray, fi: np.ndarray,
                    lj: np.ndarray) -> np.ndarray:
        def col(a: np.ndarray) -> np.ndarray:
            return a[:, None, None]
        return (size * col(self.blk[m][sl, v]) + fi * col(self.first[m][sl, v])
                + lj * col(self.last[m][sl, v]))

    # -- hops: hidden states between stages, token ids back to the first stage -----------
    def _hop_routes(self, metric: str, k: int) -> Routes:
        kind = "prefill" if metric == "prefill_s" else "decode"
        return self.routes[f"{kind}:{self.codecs[k]}"]

    def _pick(self, metric: str, t: np.ndarray, e: np.ndarray, k: int) -> np.ndarray:
        if metric == "energy_j":
            return e
        if metric == COST:  # links cost nothing, but only where there is a route
            return np.where(np.isfinite(t), 0.0, INF)
        return t + C.codec_time_s(self.codecs[k])

    def hop_row(self, metric: str, k: int, src: int) -> np.ndarray:
        """(n,) cost of the hidden state leaving ``src`` with codec ``k`` to every device."""
        t, e = self._hop_routes(metric, k).row(src)
        out = np.array(self._pick(metric, t, e, k), dtype=float)
        out[src] = 0.0
        return out

    def hop(self, metric: str, k: int, a: int, b: int) -> float:
        if a == b:
            return 0.0
        t, e = self._hop_routes(metric, k).pair(a, b)
        return float(self._pick(metric, np.array(t), np.array(e), k))

    def nearest_hop(self, metric: str, k: int, U: np.ndarray) -> np.ndarray:
        """(n,) min over d2 != d of hop(d -> d2) + U[d2] (a lower bound for energy/cost)."""
        r = self._hop_routes(metric, k)
        if metric == "energy_j":
            return r.nearest(U, "energy")
        if metric == COST:  # free links: the best other device, reachable or not (a bound)
            return _best_other(U)
        return r.nearest(U) + C.codec_time_s(self.codecs[k])

    def min_out_hop(self, metric: str) -> np.ndarray:
        """(n,) the cheapest hop from each device to any other, over the codecs."""
        out = np.full(self.n, INF)
        for k in range(len(self.codecs)):
            r = self._hop_routes(metric, k)
            if metric == "energy_j":
                m = r.min_out("energy")
            elif metric == COST:
                m = np.where(np.isfinite(r.min_out()), 0.0, INF)
            else:
                m = r.min_out() + C.codec_time_s(self.codecs[k])
            out = np.minimum(out, m)
        return out

    def _tok_routes(self, metric: str) -> Routes:
        return self.routes["prompt" if metric == "prefill_s" else "tok"]

    @staticmethod
    def _tok_pick(metric: str, t: np.ndarray, e: np.ndarray) -> np.ndarray:
        if metric == "energy_j":
            return e
        if metric == COST:  # token ids cost nothing, but only where there is a route
            return np.where(np.isfinite(t), 0.0, INF)
        return t

    def tok_row(self, metric: str, src: int) -> np.ndarray:
        """(n,) token ids (the prompt's for prefill) from ``src`` to every device."""
        return self._tok_pick(metric, *self._tok_routes(metric).row(src))

    def tok_col(self, metric: str, dst: int) -> np.ndarray:
        """(n,) token ids from every device to ``dst``."""
        return self._tok_pick(metric, *self._tok_routes(metric).col(dst))

    def tok(self, metric: str, a: int, b: int) -> float:
        t, e = self._tok_routes(metric).pair(a, b)
        return float(self._tok_pick(metric, np.array(t), np.array(e)))


def _best_other(U: np.ndarray) -> np.ndarray:
    """(n,) min over d2 != d of U[d2]."""
    out = np.full(len(U), INF)
    if len(U) > 1:
        a, b = np.argsort(U)[:2]
        out[:] = U[a]
        out[a] = U[b]
    return out


def _class_costs(model: C.ModelCosts, p, vs: list[Variant],
                 calibration: C.Calibration) -> tuple[np.ndarray, ...]:
    """(3 tables x metrics) x V of one device class: fleets repeat classes, so a 10,000-device
    fleet prices a dozen classes, not 10,000 devices."""
    blk, first, last = (np.zeros((len(METRICS), len(vs))) for _ in range(3))
    for b, v in enumerate(vs):
        for tab, sc in ((blk, C.block_cost(model, p, v, calibration)),
                        (first, C.embed_cost(model, p, v, calibration)),
                        (last, C.head_cost(model, p, v, calibration))):
            tab[:, b] = (sc.decode_s, sc.prefill_s, C.energy_j(sc.decode_s, p))
    return blk, first, last


def _zone_check(fleet: Fleet, policy: Policy) -> np.ndarray:
    """(n,) devices in the policy's zone; a policy no plan can keep is an error with the fix."""
    zone = policy.keep_in
    inz = np.array([d.zone == zone for d in fleet.devices], dtype=bool)
    if not inz.any():
        zones = sorted({d.zone for d in fleet.devices if d.zone is not None})
        raise PlanningError(
            f"the policy keeps tokens in zone {zone!r}, but no device of fleet {fleet.name!r} "
            f"is in it (zones: {', '.join(zones) or 'none set'}): add `zone: {zone}` to the "
            "devices that are there, or keep them in another zone (--keep-in)")
    for what, end in (("entry", fleet.entry), ("exit", fleet.exit)):
        dz = fleet.device(end).zone
        if dz != zone:
            raise PlanningError(
                f"the fleet's {what} {end!r} is in zone {dz!r}, not {zone!r}: requests "
                f"{'arrive' if what == 'entry' else 'return'} outside the zone the policy keeps "
                f"them in; make the {what} a device of zone {zone!r} or set its `zone: {zone}`")
    return inz


def build(model: C.ModelCosts, fleet: Fleet, variants: dict[str, Variant],
          constraints: Constraints = Constraints(),
          calibration: C.Calibration = C.UNCALIBRATED,
          policy: Policy | None = None) -> CostTables:
    """``policy`` replaces the fleet's own (``fleet.policy``) when given."""
    policy = fleet.policy if policy is None else policy
    devs = list(fleet.devices)
    ids = [d.id for d in devs]
    vs = list(variants.values())
    n = len(devs)
    reach = reachable(fleet, fleet.entry)
    excluded: dict[str, str] = {}
    pos: dict[int, int] = {}  # id of a device class (a shared catalog object) -> its row
    tabs: list[tuple[np.ndarray, ...]] = []
    cls = np.zeros(n, dtype=np.int64)
    for a, d in enumerate(devs):
        if id(d.profile) not in pos:
            pos[id(d.profile)] = len(tabs)
            tabs.append(_class_costs(model, d.profile, vs, calibration))
        cls[a] = pos[id(d.profile)]
    stack = [np.stack([tb[t] for tb in tabs]) for t in range(3)]  # (classes, metrics, V)
    blk, first, last = ({m: tab[cls, i] for i, m in enumerate(METRICS)} for tab in stack)
    mem_blk = np.tile([model.block_memory(v) for v in vs], (n, 1))
    mem_first = np.tile([model.embed_memory(v) for v in vs], (n, 1))
    mem_last = np.tile([model.head_memory(v) for v in vs], (n, 1))
    cap = np.array([d.free_memory for d in devs], dtype=float)
    quality_ok = np.array([v.quality >= constraints.min_quality for v in vs])
    names = [v.name for v in vs]
    ok = np.tile(quality_ok, (n, 1))
    for a, d in enumerate(devs):
        if d.artifacts is not None:
            ok[a] &= np.array([nm in d.artifacts for nm in names])
    fits = ok & (mem_blk + C.STAGE_RUNTIME_BYTES <= cap[:, None])
    for a, d in enumerate(devs):
        if d.id not in reach:
            excluded[d.id] = f"unreachable from the entry {fleet.entry!r}"
        elif d.battery is not None and d.battery < constraints.battery_reserve:
            excluded[d.id] = (f"battery {d.battery:.0%} is below the reserve "
                              f"{constraints.battery_reserve:.0%}")
        elif not ok[a].any():
            excluded[d.id] = (f"holds no variant of quality >= {constraints.min_quality} "
                              f"(artifacts: {', '.join(d.artifacts or ()) or 'none'})")
        elif not fits[a].any():
            need = float(np.min(np.where(ok[a], mem_blk[a], INF))) + C.STAGE_RUNTIME_BYTES
            excluded[d.id] = (f"{cap[a] / 1e6:.1f} MB free cannot hold one block "
                              f"({need / 1e6:.1f} MB in its smallest variant, with the "
                              f"{C.STAGE_RUNTIME_BYTES / 1e6:.0f} MB of the process itself)")
        if d.id in excluded:
            ok[a] = False
    codecs = [c for c in constraints.codecs if CODEC_QUALITY[c] >= constraints.min_quality]
    graph = LinkGraph(fleet, ids)
    token_graph = hidden_graph = graph
    can_end = np.ones(n, dtype=bool)
    restricted: dict[str, str] = {}
    if policy.keep_in is not None:
        zone = policy.keep_in
        inz = _zone_check(fleet, policy)
        # token ids (prompt and generated) travel only over the zone's own links
        token_graph = LinkGraph(fleet, ids, keep=inz)
        if policy.hidden_states:
            hidden_graph = token_graph
        for a, d in enumerate(devs):
            if inz[a]:
                continue
            where = f"zone {d.zone!r}" if d.zone is not None else "no zone"
            if policy.hidden_states:
                reason = (f"excluded by the policy: {where} is outside {zone!r} (hidden states "
                          "stay in the zone too)")
                restricted[d.id] = reason
                if d.id not in excluded:
                    excluded[d.id] = reason
                    ok[a] = False
            else:
                can_end[a] = False
                restricted[d.id] = (f"the policy allows it middle stages only: {where} is "
                                    f"outside {zone!r}, where tokens stay")
    b = model.batch  # a decode step carries one token of every sequence
    routes = {"tok": Routes(token_graph, C.TOKEN_ID_BYTES * b),
              "prompt": Routes(token_graph, C.TOKEN_ID_BYTES * model.prompt_len * b)}
    for c in codecs:
        routes[f"decode:{c}"] = Routes(hidden_graph, model.activation_bytes(c, b))
        routes[f"prefill:{c}"] = Routes(hidden_graph,
                                        model.activation_bytes(c, model.prompt_len * b))
    shared = np.tile([model.shared_memory(v) for v in vs], (n, 1))
    return CostTables(fleet, model, vs, codecs, ids, ids.index(fleet.entry), ids.index(fleet.exit),
                      blk, first, last, mem_blk, mem_first, mem_last, cap, ok, routes, excluded,
                      mem_shared=shared, policy=policy, can_end=can_end, restricted=restricted)
