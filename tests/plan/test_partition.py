"""The planner is exact: on random small fleets it equals brute-force enumeration."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from edgeweave.errors import ConfigError, PlanningError
from edgeweave.plan import objectives as O
from edgeweave.plan.partition import place_tables, search, tables_for
from edgeweave.profile.variants import DEFAULT_VARIANTS
from edgeweave.types import Plan, Shard, Stage
from tests.plan.randfleet import random_fleet, tiny_costs

KEYS = {name: O.get(name).key for name in O.OBJECTIVES}


def brute_force(t, keys=tuple(KEYS.values())) -> dict[str, float]:
    """Every plan (distinct devices in any order, every cut, variant and codec): the best
    value of each objective among the feasible ones."""
    L, n = t.L, t.n
    best = dict.fromkeys(keys, np.inf)
    vnames = [v.name for v in t.variants]
    for k in range(1, min(n, L) + 1):
        for devs in itertools.permutations(t.devices, k):
            for cuts in itertools.combinations(range(1, L), k - 1):
                bounds = [0, *cuts, L]
                for vs in itertools.product(vnames, repeat=k):
                    for cs in itertools.product(t.codecs or ["fp32"], repeat=k - 1):
                        stages = tuple(Stage(devs[s], Shard(bounds[s], bounds[s + 1], L), vs[s],
                                             cs[s] if s < k - 1 else "fp32") for s in range(k))
                        p = O.evaluate(Plan(stages), t)
                        if p["feasible"]:
                            for key in best:
                                best[key] = min(best[key], p[key])
    return best


def _case(seed: int):
    rng = random.Random(seed)
    n, L = rng.randint(1, 4), rng.randint(1, 4)
    names = tuple(rng.sample(["fp32", "fp16", "int8", "int4"], rng.randint(1, 2)))
    model = tiny_costs(rng, L)
    fleet = random_fleet(rng, n, variant_names=names, model=model if rng.random() < 0.7 else None)
    variants = {v: DEFAULT_VARIANTS[v] for v in names}
    codecs = tuple(rng.sample(["fp32", "fp16", "int8"], rng.randint(1, 2)))
    return tables_for(model, fleet, variants=variants, codecs=codecs,
                      min_quality=rng.choice([0.0, 0.0, 0.95]),
                      battery_reserve=rng.choice([0.0, 0.2]))


@pytest.mark.parametrize("chunk", range(8))
def test_dp_equals_brute_force_on_random_fleets(chunk: int) -> None:
    checked = 0
    for seed in range(chunk * 30, chunk * 30 + 30):  # 240 fleets in all
        t = _case(seed)
        truth = brute_force(t)
        for name, key in KEYS.items():
            if not np.isfinite(truth[key]):
                with pytest.raises(PlanningError):
                    place_tables(t, name)
                continue
            plan = place_tables(t, name)
            got = plan.predicted[key]
            assert plan.predicted["feasible"] == 1.0
            assert got == pytest.approx(truth[key], rel=1e-9), (seed, name, plan)
            # the search's own value agrees with the independent evaluation of its plan
            value, _, proven = search(t, O.get(name))
            assert proven and value == pytest.approx(truth[key], rel=1e-9), (seed, name)
        checked += 1
    assert checked == 30


def test_plan_tiles_the_model_and_explains_left_out_devices() -> None:
    t = _case(3)
    while True:
        try:
            plan = place_tables(t, "latency")
            break
        except PlanningError:
            t = _case(np.random.randint(1000, 2000))
    assert plan.stages[0].shard.start == 0 and plan.stages[-1].shard.end == t.L
    used = {s.device for s in plan.stages}
    for d in t.devices:
        if d not in used:
            assert any(n.startswith(f"{d} left out:") for n in plan.notes), plan.notes


def test_unknown_objective_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown objective"):
        place_tables(_case(1), "speed")


def test_planning_does_not_import_torch() -> None:
    """Planners run on control-plane hosts and in the CLI: they must stay light."""
    import subprocess
    import sys

    code = ("import sys, edgeweave.plan, edgeweave.plan.adapt, edgeweave.plan.baselines, "
            "edgeweave.plan.fleet, edgeweave.profile.cost; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("budget", [2, 4])
def test_bounded_search_reports_a_true_lower_bound(budget: int) -> None:
    """Cut short, the search's plan is no better than the optimum and its lower bound no
    worse: the optimality gap it reports is honest."""
    from edgeweave.plan.partition import search_bounded

    cut = 0
    for seed in range(60):
        t = _case(seed)
        truth = brute_force(t)
        for name, key in KEYS.items():
            r = search_bounded(t, O.get(name), node_budget=budget)
            if not np.isfinite(truth[key]) or not np.isfinite(r.value):
                continue
            assert r.value >= truth[key] * (1 - 1e-9), (seed, name)
            assert r.lower_bound <= truth[key] * (1 + 1e-9), (seed, name, r)
            assert 0.0 <= r.gap <= 1.0
            cut += not r.proven
    assert cut > 0  # the budget did stop some searches


def test_plan_says_its_optimality_gap_when_the_search_is_cut(monkeypatch) -> None:
    import edgeweave.plan.partition as P

    for seed in range(200):
        t = _case(seed)
        if t.n >= 3 and t.L >= 3:
            try:
                exact = place_tables(t, "latency")
            except PlanningError:
                continue
            monkeypatch.setattr(P, "node_budget_for", lambda n, L: 2)
            try:
                cut = place_tables(t, "latency")
            except PlanningError as e:  # cut before any plan: says so, not "fits nowhere"
                assert "stopped after" in str(e)
                continue
            finally:
                monkeypatch.undo()
            if cut.predicted["search_nodes"] > 2:
                assert exact.predicted["optimality_gap"] == 0.0
                assert any(n.startswith("bounded search") for n in cut.notes), cut.notes
                gap = cut.predicted["optimality_gap"]
                lb = cut.predicted["per_token_s"] * (1 - gap)
                assert lb <= exact.predicted["per_token_s"] * (1 + 1e-9)
                return
    pytest.fail("no random fleet needed more than two nodes")


@pytest.mark.parametrize("seed", range(12))
def test_interchangeable_devices_keep_the_search_exact(seed: int) -> None:
    """Twins (same class, memory and links) are tried in one order only; the optimum is
    still the brute-force one."""
    from edgeweave.profile import catalog
    from edgeweave.types import Fleet, FleetDevice, Link

    rng = random.Random(seed)
    model = tiny_costs(rng, rng.randint(2, 4))
    cls = rng.choice(["rpi4-4gb", "rpi5-8gb", "rpi-zero-2w"])
    hub = FleetDevice("hub", catalog.device(rng.choice(["rpi4-4gb", "jetson-orin-nano-8gb"])))
    twins = [FleetDevice(f"t{k}", catalog.device(cls)) for k in range(3)]
    link = catalog.link(rng.choice(["ethernet", "wifi5"]))
    fleet = Fleet("twins", (FleetDevice("entry", catalog.device("rpi-zero-2w")), hub, *twins),
                  (Link("entry", "hub", catalog.link("wifi4")),
                   *(Link("hub", d.id, link) for d in twins)), "entry", "entry")
    t = tables_for(model, fleet, variants={"fp32": DEFAULT_VARIANTS["fp32"]})
    tw = t.twins()
    assert list(tw[2:]) == [-1, 2, 3] and tw[0] == -1  # t1 after t0, t2 after t1
    truth = brute_force(t)
    for name, key in KEYS.items():
        if np.isfinite(truth[key]):
            assert place_tables(t, name).predicted[key] == pytest.approx(truth[key], rel=1e-9)
