"""Baseline planners with the same API as :func:`edgeweave.plan.place`.

* ``memory`` - layers split in proportion to each device's memory, every device used, in
  fleet order starting at the entry: the policy of exo's memory-weighted ring and of
  llama.cpp RPC's ``--tensor-split`` (which users set from memory sizes).
* ``neurosurgeon`` - one cut between the entry device and the cloud (Kang et al., ASPLOS
  2017): blocks ``[0, k)`` at the entry, ``[k, L)`` on the fastest remote device, best ``k``.
* ``single`` - the best single device.
* ``cloud`` - everything on the fleet's cloud-tier device (or its fastest device).

Baselines use one variant and one codec throughout, the best for them among the allowed
ones, and respect the same constraints, so a comparison isolates the placement policy.
Plans that break memory carry ``predicted["feasible"] == 0`` (exo and llama.cpp would fail
to load them) rather than raising.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from edgeweave.errors import ConfigError, PlanningError
from edgeweave.plan import objectives as O
from edgeweave.plan.objectives import evaluate, make_plan
from edgeweave.plan.partition import tables_for
from edgeweave.plan.tables import CostTables
from edgeweave.profile.cost import ModelCosts
from edgeweave.types import Fleet, Plan

Parts = list[tuple[int, int, int, int, int]]
BASELINES: dict[str, Callable[[CostTables, int], list[Parts]]] = {}

if TYPE_CHECKING:  # importing edgeweave.models pulls in torch
    from edgeweave.models.config import ModelConfig


def baseline(name: str) -> Callable[[Callable[[CostTables, int], list[Parts]]],
                                     Callable[[CostTables, int], list[Parts]]]:
    def deco(fn: Callable[[CostTables, int], list[Parts]]) -> Callable[[CostTables, int], list[Parts]]:
        BASELINES[name] = fn
        return fn
    return deco


def _usable(t: CostTables, v: int) -> list[int]:
    return [k for k, d in enumerate(t.devices) if d not in t.excluded and t.ok[k, v]]


def _fleet_order(t: CostTables, devs: list[int]) -> list[int]:
    """Entry first, then the rest in breadth-first order of the link graph (a ring walk)."""
    dist = t.tok_row("decode_s", t.entry)
    order = sorted(devs, key=lambda k: (k != t.entry, dist[k], k))
    if order and not t.can_end[order[-1]]:  # a residency policy: the ring closes in the zone
        ends = [k for k in order[1:] if t.can_end[k]]
        if ends:
            order.remove(ends[-1])
            order.append(ends[-1])
    return order


@baseline("memory")
def _memory(t: CostTables, v: int) -> list[Parts]:
    devs = _fleet_order(t, _usable(t, v))
    if not devs:
        return []
    cap = np.array([t.cap[k] for k in devs])
    share = cap / cap.sum() * t.L
    blocks = np.floor(share).astype(int)
    for k in np.argsort(-(share - blocks))[: t.L - blocks.sum()]:  # largest remainder
        blocks[k] += 1
    parts, start = [], 0
    for k, b in zip(devs, blocks, strict=True):
        if b:
            parts.append([k, v, start, start + int(b), 0])
            start += int(b)
    return [[tuple(p) for p in parts]]  # type: ignore[misc]


def _fastest(t: CostTables, v: int, devs: list[int]) -> int:
    return min(devs, key=lambda k: t.blk["decode_s"][k, v])


@baseline("neurosurgeon")
def _neurosurgeon(t: CostTables, v: int) -> list[Parts]:
    devs = _usable(t, v)
    remote = [k for k in devs if k != t.entry]
    if not remote:
        return []
    # the fastest remote device that may hold the last stage (all of them without a policy)
    r = _fastest(t, v, [k for k in remote if t.can_end[k]] or remote)
    out: list[Parts] = [[(r, v, 0, t.L, 0)]]
    if t.entry in devs:
        out.append([(t.entry, v, 0, t.L, 0)])
        out += [[(t.entry, v, 0, k, 0), (r, v, k, t.L, 0)] for k in range(1, t.L)]
    return out


@baseline("single")
def _single(t: CostTables, v: int) -> list[Parts]:
    return [[(k, v, 0, t.L, 0)] for k in _usable(t, v)]


@baseline("cloud")
def _cloud(t: CostTables, v: int) -> list[Parts]:
    devs = _usable(t, v)
    cloud = [k for k in devs if t.fleet.devices[k].profile.tier == "cloud"]
    if not (cloud or devs):
        return []
    return [[(_fastest(t, v, cloud or devs), v, 0, t.L, 0)]]


def baseline_tables(t: CostTables, name: str, objective: str = "latency") -> Plan:
    """The baseline's best plan (over its variant/codec/cut choices) for ``objective``."""
    if name not in BASELINES:
        raise ConfigError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    key = O.get(objective).key
    best: tuple[tuple[float, float], Plan] | None = None
    for v in range(len(t.variants)):
        for parts in BASELINES[name](t, v):
            for c in range(len(t.codecs)):
                full = [(d, vv, i, j, c if n + 1 < len(parts) else -1)
                        for n, (d, vv, i, j, _) in enumerate(parts)]
                plan = make_plan(t, full, objective, (f"baseline: {name}",))
                p = plan.predicted
                score = (0.0 if p["feasible"] else 1.0, p[key])
                if best is None or score < best[0]:
                    best = (score, plan)
                if len(parts) == 1:
                    break  # the codec does not matter for a single stage
    if best is None:
        raise PlanningError(f"baseline {name!r} has no candidate in fleet {t.fleet.name!r}: "
                            "no usable device (see the planner's notes for why)")
    return best[1]


def place_baseline(model: ModelConfig | ModelCosts, fleet: Fleet, name: str,
                   objective: str = "latency", **kw: object) -> Plan:
    """Same arguments as :func:`edgeweave.plan.place`, plus the baseline ``name``."""
    return baseline_tables(tables_for(model, fleet, **kw), name, objective)  # type: ignore[arg-type]


__all__ = ["BASELINES", "baseline_tables", "evaluate", "place_baseline"]
