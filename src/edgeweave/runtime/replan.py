"""Pure re-planning for failover: move the stages of failed devices onto survivors.

Shard boundaries stay where they were, so only the failed stages (and the stages after the
first of them) need replaying. The planner's ``plan.adapt`` can replace this function: the
coordinator accepts any ``(plan, failed, alive) -> Plan`` callable.
"""

from __future__ import annotations

from collections.abc import Collection

from edgeweave.errors import PlanningError
from edgeweave.types import Plan, Stage


def reassign_failed(plan: Plan, failed: Collection[str], alive: Collection[str]) -> Plan:
    """Give each stage on a failed device to the nearest surviving device of the plan
    (upstream first, since that node already holds the neighbouring blocks' inputs), or to
    any other alive device; variants and codecs are kept."""
    survivors = [s.device for s in plan.stages if s.device not in failed]
    spare = [d for d in alive if d not in failed]
    if not survivors and not spare:
        raise PlanningError(f"every device of the plan failed ({', '.join(sorted(failed))}) "
                            "and no other node is alive: start a node and attach it")
    stages = list(plan.stages)
    for i, s in enumerate(stages):
        if s.device not in failed:
            continue
        before = [t.device for t in stages[:i] if t.device not in failed]
        after = [t.device for t in stages[i + 1:] if t.device not in failed]
        device = (before[-1] if before else after[0] if after else spare[0])
        stages[i] = Stage(device, s.shard, s.variant, s.codec)
    note = f"failover: {', '.join(sorted(failed))} -> reassigned"
    return Plan(tuple(stages), plan.objective, {}, (*plan.notes, note))


def first_change(old: Plan, new: Plan) -> int:
    """Index of the first stage that differs (device, shard, variant or codec); stages
    before it keep their caches. ``len(new.stages)`` when nothing changed."""
    for i, (a, b) in enumerate(zip(old.stages, new.stages, strict=False)):
        if a != b:
            return i
    return min(len(old.stages), len(new.stages)) if len(old.stages) != len(new.stages) \
        else len(new.stages)
