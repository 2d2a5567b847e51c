"""Cost tables of one (model, fleet, constraints): the arrays the planner searches over.

Everything the partitioner and the baselines need is precomputed here with numpy:
per device x variant the cost of one block, of the embedding (first stage) and of the head
(last stage), for each metric; per ordered device pair and codec the cost of sending the
hidden state along the fastest route of the link graph (multi-hop routes are found by
Floyd-Warshall per payload size); memory per block and capacity per device; and why a
device cannot take part at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeweave.errors import ConfigError
from edgeweave.plan.fleet import reachable
from edgeweave.profile import cost as C
from edgeweave.profile.variants import CODEC_QUALITY, Variant
from edgeweave.types import CODECS, Fleet
from edgeweave.validate import is_number

METRICS = ("decode_s", "prefill_s", "energy_j")
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
    hop: dict[str, np.ndarray]  # metric -> (n, n, K) hidden state of one step, by codec
    tok: dict[str, np.ndarray]  # metric -> (n, n) one token id (decode) / prompt ids (prefill)
    excluded: dict[str, str] = field(default_factory=dict)  # device -> reason
    mem_stage: float = C.STAGE_RUNTIME_BYTES  # the process every stage runs in

    @property
    def n(self) -> int:
        return len(self.devices)

    @property
    def L(self) -> int:  # noqa: N802 - the usual name for the number of layers
        return self.model.n_layers

    def stage_arrays(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(n, V, L+1, L+1) cost of a stage [i, j) per metric (inf where it cannot run),
        and the matching memory feasibility mask."""
        L = self.L
        i = np.arange(L + 1)[:, None]
        j = np.arange(L + 1)[None, :]
        size = np.where(j > i, j - i, 0)[None, None]
        valid = (j > i)[None, None]
        fi = (i == 0)[None, None]
        lj = (j == L)[None, None]
        ex = lambda a: a[:, :, None, None]  # noqa: E731
        mem = (size * ex(self.mem_blk) + fi * ex(self.mem_first) + lj * ex(self.mem_last)
               + self.mem_stage)
        feas = valid & (mem <= self.cap[:, None, None, None]) & ex(self.ok)
        cost = (size * ex(self.blk[metric]) + fi * ex(self.first[metric])
                + lj * ex(self.last[metric]))
        return np.where(feas, cost, INF), feas


def _routes(fleet: Fleet, ids: list[str], nbytes: float) -> tuple[np.ndarray, np.ndarray]:
    """(time, energy) of sending ``nbytes`` between every ordered pair on the fastest route."""
    n = len(ids)
    idx = {d: k for k, d in enumerate(ids)}
    T = np.full((n, n), INF)
    E = np.full((n, n), INF)
    np.fill_diagonal(T, 0.0)
    np.fill_diagonal(E, 0.0)
    for ln in fleet.links:
        if ln.a not in idx or ln.b not in idx:
            continue
        a, b = idx[ln.a], idx[ln.b]
        for s, t, up in ((a, b, True), (b, a, False)):
            tt = C.hop_time_s(nbytes, ln.profile, up, ln.bandwidth_scale)
            if tt < T[s, t]:
                T[s, t], E[s, t] = tt, C.hop_energy_j(nbytes, ln.profile)
    for k in range(n):
        alt = T[:, k, None] + T[None, k, :]
        better = alt < T
        if better.any():
            E = np.where(better, E[:, k, None] + E[None, k, :], E)
            T = np.where(better, alt, T)
    return T, E


def build(model: C.ModelCosts, fleet: Fleet, variants: dict[str, Variant],
          constraints: Constraints = Constraints(),
          calibration: C.Calibration = C.UNCALIBRATED) -> CostTables:
    devs = list(fleet.devices)
    ids = [d.id for d in devs]
    vs = list(variants.values())
    n, V = len(devs), len(vs)
    reach = reachable(fleet, fleet.entry)
    excluded: dict[str, str] = {}
    blk = {m: np.zeros((n, V)) for m in METRICS}
    first = {m: np.zeros((n, V)) for m in METRICS}
    last = {m: np.zeros((n, V)) for m in METRICS}
    mem_blk, mem_first, mem_last = np.zeros((n, V)), np.zeros((n, V)), np.zeros((n, V))
    ok = np.zeros((n, V), dtype=bool)
    cap = np.array([d.free_memory for d in devs], dtype=float)
    for a, d in enumerate(devs):
        p = d.profile
        for b, v in enumerate(vs):
            bc = C.block_cost(model, p, v, calibration)
            ec = C.embed_cost(model, p, v, calibration)
            hc = C.head_cost(model, p, v, calibration)
            for tab, sc in ((blk, bc), (first, ec), (last, hc)):
                tab["decode_s"][a, b] = sc.decode_s
                tab["prefill_s"][a, b] = sc.prefill_s
                tab["energy_j"][a, b] = C.energy_j(sc.decode_s, p)
            mem_blk[a, b] = model.block_memory(v)
            mem_first[a, b] = model.embed_memory(v)
            mem_last[a, b] = model.head_memory(v)
            ok[a, b] = ((d.artifacts is None or v.name in d.artifacts)
                        and v.quality >= constraints.min_quality)
        if d.id not in reach:
            excluded[d.id] = f"unreachable from the entry {fleet.entry!r}"
        elif d.battery is not None and d.battery < constraints.battery_reserve:
            excluded[d.id] = (f"battery {d.battery:.0%} is below the reserve "
                              f"{constraints.battery_reserve:.0%}")
        elif not ok[a].any():
            excluded[d.id] = (f"holds no variant of quality >= {constraints.min_quality} "
                              f"(artifacts: {', '.join(d.artifacts or ()) or 'none'})")
        elif not (ok[a] & (mem_blk[a] + C.STAGE_RUNTIME_BYTES <= cap[a])).any():
            need = float(np.min(np.where(ok[a], mem_blk[a], INF))) + C.STAGE_RUNTIME_BYTES
            excluded[d.id] = (f"{cap[a] / 1e6:.1f} MB free cannot hold one block "
                              f"({need / 1e6:.1f} MB in its smallest variant, with the "
                              f"{C.STAGE_RUNTIME_BYTES / 1e6:.0f} MB of the process itself)")
        if d.id in excluded:
            ok[a] = False
    codecs = [c for c in constraints.codecs if CODEC_QUALITY[c] >= constraints.min_quality]
    hop = {m: np.zeros((n, n, len(codecs))) for m in METRICS}
    for k, c in enumerate(codecs):
        t1, e1 = _routes(fleet, ids, model.activation_bytes(c, 1))
        tp, _ = _routes(fleet, ids, model.activation_bytes(c, model.prompt_len))
        off = ~np.eye(n, dtype=bool)
        hop["decode_s"][:, :, k] = t1 + off * C.codec_time_s(c)
        hop["prefill_s"][:, :, k] = tp + off * C.codec_time_s(c)
        hop["energy_j"][:, :, k] = e1
    tt, te = _routes(fleet, ids, C.TOKEN_ID_BYTES)
    tp, _ = _routes(fleet, ids, C.TOKEN_ID_BYTES * model.prompt_len)
    tok = {"decode_s": tt, "prefill_s": tp, "energy_j": te}
    return CostTables(fleet, model, vs, codecs, ids, ids.index(fleet.entry), ids.index(fleet.exit),
                      blk, first, last, mem_blk, mem_first, mem_last, cap, ok, hop, tok, excluded)
