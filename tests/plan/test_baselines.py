"""Baselines share the planner's API and evaluation; the planner is never worse."""

from __future__ import annotations

import random

import numpy as np
import pytest

from edgeweave.errors import ConfigError, PlanningError
from edgeweave.plan.baselines import BASELINES, baseline_tables, place_baseline
from edgeweave.plan.partition import place_tables, tables_for
from edgeweave.profile import catalog
from edgeweave.profile.variants import DEFAULT_VARIANTS
from edgeweave.types import Fleet, FleetDevice, Link
from tests.plan.randfleet import random_fleet, tiny_costs
from tests.plan.test_fleet import SMOL


def _fleet(*classes: str) -> Fleet:
    devs = tuple(FleetDevice(f"d{k}", catalog.device(c)) for k, c in enumerate(classes))
    links = tuple(Link("d0", d.id, catalog.link("wifi5")) for d in devs[1:])
    return Fleet("f", devs, links, "d0", "d0")


def test_memory_proportional_split_follows_memory() -> None:
    t = tables_for(SMOL, _fleet("rpi4-4gb", "rpi5-8gb", "minipc-n100"),
                   variants={"fp32": DEFAULT_VARIANTS["fp32"]})
    plan = baseline_tables(t, "memory")
    sizes = {s.device: s.shard.size for s in plan.stages}
    mem = {"d0": 3.5, "d1": 7.5, "d2": 14.0}
    for d, size in sizes.items():
        assert abs(size - 30 * mem[d] / 25.0) < 1.0
    assert plan.stages[0].device == "d0"  # starts at the entry


def test_single_is_the_best_one_device_plan_and_cloud_uses_the_cloud() -> None:
    t = tables_for(SMOL, _fleet("rpi4-4gb", "laptop-m2", "cloud-a100-80gb"))
    single = baseline_tables(t, "single")
    assert len(single.stages) == 1
    cloud = baseline_tables(t, "cloud")
    assert cloud.stages[0].device == "d2"
    ns = baseline_tables(t, "neurosurgeon")
    assert len(ns.stages) <= 2
    assert ns.stages[0].device in ("d0", "d2")


@pytest.mark.parametrize("seed", range(40))
def test_planner_never_worse_than_any_baseline(seed: int) -> None:
    rng = random.Random(seed)
    model = tiny_costs(rng, rng.randint(2, 8))
    fleet = random_fleet(rng, rng.randint(2, 6), model=model, variant_names=("fp32", "int8"))
    t = tables_for(model, fleet, variants={v: DEFAULT_VARIANTS[v] for v in ("fp32", "int8")})
    for objective in ("latency", "energy"):
        try:
            ours = place_tables(t, objective)
        except PlanningError:
            continue
        key = ours.predicted
        for name in BASELINES:
            try:
                b = baseline_tables(t, name, objective)
            except PlanningError:
                continue
            if b.predicted["feasible"]:
                k = "per_token_s" if objective == "latency" else "energy_per_token_j"
                assert key[k] <= b.predicted[k] * (1 + 1e-9), (seed, objective, name)


def test_unknown_baseline_and_place_baseline_api() -> None:
    fleet = _fleet("rpi5-8gb", "minipc-n100")
    with pytest.raises(ConfigError, match="unknown baseline 'exo'"):
        place_baseline(SMOL, fleet, "exo")
    plan = place_baseline(SMOL, fleet, "memory", "latency", min_quality=0.99)
    assert np.isfinite(plan.predicted["per_token_s"])
    assert all(s.variant in ("fp32", "fp16", "int8") for s in plan.stages)
