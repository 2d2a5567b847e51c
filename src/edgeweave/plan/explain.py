"""Why a plan looks the way it does, in words: notes on the devices a plan leaves out and the
errors for fleets (or policies) no plan fits. Large fleets get counts and one example
instead of a line per device."""

from __future__ import annotations

import numpy as np

from edgeweave.errors import PlanningError
from edgeweave.plan.tables import INF, CostTables
from edgeweave.profile.cost import model_memory, stage_memory_bytes
from edgeweave.types import Plan


def no_plan(t: CostTables) -> PlanningError:
    usable = [d for d in t.devices if d not in t.excluded]
    allowed = [v for b, v in enumerate(t.variants) if t.ok[:, b].any()] or t.variants
    smallest = min(allowed, key=lambda v: v.bytes_per_weight)
    need = model_memory(t.model, smallest)
    lines = [f"{d}: {r}" for d, r in list(t.excluded.items())[:NOTE_DEVICES]]
    if len(t.excluded) > NOTE_DEVICES:
        lines.append(f"and {len(t.excluded) - NOTE_DEVICES} more devices excluded")
    if usable:
        cap = {d: t.cap[t.index[d]] for d in usable}
        top = sorted(cap.items(), key=lambda x: -x[1])
        listed = ", ".join(f"{d} {c / 1e6:.0f} MB" for d, c in top[:NOTE_DEVICES])
        if len(top) > NOTE_DEVICES:
            listed += f", ... ({len(top) - NOTE_DEVICES} more)"
        lines.append(f"free memory of the usable devices: {listed} "
                     f"({sum(cap.values()) / 1e6:.0f} MB together)")
    if t.policy.active:
        return _no_plan_with_policy(t, need, smallest.name, lines)
    return PlanningError(
        f"model {t.model.name!r} fits nowhere in fleet {t.fleet.name!r}: it needs "
        f"{need / 1e6:.0f} MB even as {smallest.name} (weights + KV cache for "
        f"{t.model.context} tokens). " + "; ".join(lines)
        + ". Add a device with more memory, allow a smaller variant, lower min_quality, "
          "or shorten the context")


def _no_plan_with_policy(t: CostTables, need: float, variant: str,
                         lines: list[str]) -> PlanningError:
    p = t.policy
    fixes = []
    if p.keep_in is not None:
        zone = [k for k, d in enumerate(t.fleet.devices) if d.zone == p.keep_in]
        free = sum(t.cap[k] for k in zone if t.devices[k] not in t.excluded)
        lines = [f"zone {p.keep_in!r} has {len(zone)} devices with {free / 1e6:.0f} MB free "
                 "together", *lines]
        if p.hidden_states:
            fixes.append("let hidden states leave the zone (policy hidden_states: false)")
        fixes.append(f"add memory to zone {p.keep_in!r} (a device with `zone: {p.keep_in}`)")
    if p.max_cost_per_mtok is not None:
        fixes.append(f"raise max_cost_per_mtok above {p.max_cost_per_mtok:g}")
    fixes += ["allow a smaller variant", "shorten the context"]
    return PlanningError(
        f"no plan of {t.model.name!r} on fleet {t.fleet.name!r} keeps the policy "
        f"({p.describe()}): the model needs {need / 1e6:.0f} MB as {variant}. "
        + "; ".join(lines) + ". To fix: " + ", or ".join(fixes))


NOTE_DEVICES = 24  # past this many left-out devices, notes are counted, not listed
_KINDS = (("policy", "by the policy"), ("zone", "by the policy"), ("unreachable", "unreachable"),
          ("battery", "battery low"), ("MB free", "too little memory"),
          ("variant", "no allowed variant"))


def exclusion_kind(reason: str) -> str:
    """A short category of an exclusion reason, to count them on large fleets."""
    return next((k for word, k in _KINDS if word in reason), "other")


def left_out(t: CostTables, plan: Plan, metric: str) -> tuple[str, ...]:
    used = {s.device for s in plan.stages}
    notes = []
    per_blk = np.where(t.ok, t.blk[metric], INF)
    used_idx = [t.index[d] for d in used]
    ref = float(np.min(per_blk[used_idx]))
    unit, scale = ("ms", 1e3) if metric.endswith("_s") else ("mJ", 1e3)
    idle = [k for k, d in enumerate(t.devices) if d not in used and d not in t.excluded]
    excluded = [d for d in t.devices if d in t.excluded and d not in used]
    if len(idle) + len(excluded) > NOTE_DEVICES:  # a large fleet: counts and examples
        why: dict[str, int] = {}
        for d in excluded:
            key = exclusion_kind(t.excluded[d])
            why[key] = why.get(key, 0) + 1
        if excluded:
            notes.append(f"{len(excluded)} devices left out as unusable: " + "; ".join(
                f"{c} {k}" for k, c in sorted(why.items(), key=lambda x: -x[1]))
                + f" (e.g. {excluded[0]}: {t.excluded[excluded[0]]})")
        if idle:
            k = min(idle, key=lambda x: per_blk[x].min())
            notes.append(f"{len(idle)} feasible devices not on the optimal path (the fastest "
                         f"of them, {t.devices[k]}: one block {per_blk[k].min() * scale:.3g} "
                         f"{unit} vs {ref * scale:.3g} {unit} on the plan's best device)")
        return tuple(notes)
    hops = np.min([t.hop_row("decode_s", c, u) for u in used_idx
                   for c in range(len(t.codecs))], axis=0) if t.codecs else np.full(t.n, INF)
    for k, d in enumerate(t.devices):
        if d in used:
            continue
        if d in t.excluded:
            notes.append(f"{d} left out: {t.excluded[d]}")
            continue
        v = int(np.argmin(per_blk[k]))
        notes.append(f"{d} left out: feasible but not on the optimal path (one block: "
                     f"{per_blk[k, v] * scale:.3g} {unit} as {t.variants[v].name} vs "
                     f"{ref * scale:.3g} {unit} on the plan's best device; one hop from the "
                     f"plan: {hops[k] * 1e3:.3g} ms)")
    return tuple(notes)


def explain(t: CostTables, plan: Plan) -> list[str]:
    """What ``--explain`` adds: the policy, every device it excluded or restricted, and the
    stage-by-stage memory and time."""
    lines = [f"policy: {t.policy.describe()}"]
    barred = list(t.restricted.items())
    for d, why in barred[:NOTE_DEVICES]:
        lines.append(f"{d}: {why}")
    if len(barred) > NOTE_DEVICES:
        lines.append(f"... and {len(barred) - NOTE_DEVICES} more devices barred by the policy")
    if t.policy.keep_in is not None and not barred:
        lines.append(f"every device is in zone {t.policy.keep_in!r}: the policy excludes none")
    vs = {v.name: v for v in t.variants}
    for s in plan.stages:
        k = t.index[s.device]
        mem = stage_memory_bytes(t.model, vs[s.variant], s.shard.start, s.shard.end)
        d = t.fleet.devices[k]
        lines.append(f"stage {s.device} {s.shard} {s.variant}: {mem / 1e9:.2f} GB of "
                     f"{t.cap[k] / 1e9:.2f} GB free; zone {d.zone or '-'}"
                     + (f", {d.price_per_mtok:g} per million tokens" if d.price_per_mtok else ""))
    return lines
