"""Privacy zones and prices: tokens stay in the zone, costs are an objective and a limit."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgeweave.errors import ConfigError, PlanningError
from edgeweave.models.cards import CARDS
from edgeweave.plan.adapt import Adapter, DeviceGone
from edgeweave.plan.fleet import load_fleet
from edgeweave.plan.partition import place_tables, tables_for
from edgeweave.profile.variants import DEFAULT_VARIANTS
from edgeweave.types import Fleet, Policy
from tests.helpers import cli_error
from tests.plan.randfleet import random_fleet, tiny_costs
from tests.plan.test_partition import KEYS, brute_force

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "fleets"
HOME = Policy(keep_in="home")
B8 = CARDS["llama-3.1-8b"].costs()


def home_fleet(policy: Policy = HOME) -> Fleet:
    return replace(load_fleet(EXAMPLES / "smart-home.yaml").fleet, policy=policy)


def zone_of(fleet: Fleet, device: str) -> str | None:
    return fleet.device(device).zone


def test_tokens_stay_home_and_the_cloud_runs_the_middle_only() -> None:
    fleet = home_fleet()
    t = tables_for(B8, fleet, min_quality=0.999)
    plan = place_tables(t, "latency")
    assert zone_of(fleet, plan.stages[0].device) == "home"
    assert zone_of(fleet, plan.stages[-1].device) == "home"
    assert "cloud" in {s.device for s in plan.stages}  # hidden states may leave
    assert any("middle stages only" in n for n in plan.notes)
    free = place_tables(tables_for(B8, replace(fleet, policy=Policy()), min_quality=0.999))
    assert [s.device for s in free.stages] == ["cloud"]  # without the policy: all cloud
    assert plan.predicted["per_token_s"] > free.predicted["per_token_s"]


def test_hidden_states_too_keep_every_stage_home() -> None:
    fleet = home_fleet(Policy(keep_in="home", hidden_states=True))
    t = tables_for(B8, fleet, min_quality=0.999)
    plan = place_tables(t, "latency")
    assert {zone_of(fleet, s.device) for s in plan.stages} == {"home"}
    assert "excluded by the policy" in t.excluded["cloud"]
    assert len(plan.stages) >= 2  # 16 GB fits neither the mini-PC nor the Pi 4 alone


def test_token_routes_do_not_cross_the_zone() -> None:
    """Two home devices joined only through the cloud: tokens cannot pass between them."""
    doc = {"name": "t", "entry": "a", "devices": {"a": {"class": "rpi5-8gb", "zone": "home"},
           "b": {"class": "rpi5-8gb", "zone": "home"},
           "c": {"class": "cloud-a100-80gb", "zone": "cloud"}},
           "links": [["a", "c", "fiber-wan"], ["c", "b", "fiber-wan"]],
           "policy": {"keep_in": "home"}}
    from edgeweave.plan.fleet import fleet_from_dict

    fleet = fleet_from_dict(doc).fleet
    t = tables_for(CARDS["llama-3.2-1b"].costs(), fleet)
    assert np.isinf(t.tok("decode_s", t.index["b"], t.index["a"]))
    assert np.isfinite(t.hop("decode_s", 0, t.index["b"], t.index["a"]))
    plan = place_tables(t)
    # b can never be first or last (its tokens would cross the cloud): the plan starts and
    # ends on a
    assert plan.stages[0].device == "a" and plan.stages[-1].device == "a"


@pytest.mark.parametrize("chunk", range(4))
def test_policy_plans_equal_brute_force(chunk: int) -> None:
    checked = 0
    for seed in range(chunk * 25, chunk * 25 + 25):
        rng = random.Random(seed)
        n, L = rng.randint(2, 4), rng.randint(1, 4)
        model = tiny_costs(rng, L)
        fleet = random_fleet(rng, n, model=model)
        zones = {d.id: rng.choice(["home", "cloud"]) for d in fleet.devices}
        zones[fleet.entry] = zones[fleet.exit] = "home"
        devices = tuple(replace(d, zone=zones[d.id], price_per_mtok=rng.choice([0.0, 0.1, 0.5]))
                        for d in fleet.devices)
        policy = Policy("home", rng.random() < 0.3, rng.choice([None, 0.05, 0.3]))
        fleet = replace(fleet, devices=devices, policy=policy)
        t = tables_for(model, fleet, variants={"fp32": DEFAULT_VARIANTS["fp32"]})
        objectives = {**KEYS, "cost": "cost_per_mtok"}
        truth = brute_force(t, tuple(objectives.values()))
        for name, key in objectives.items():
            if not np.isfinite(truth[key]):
                with pytest.raises(PlanningError):
                    place_tables(t, name)
                continue
            plan = place_tables(t, name)
            assert plan.predicted["feasible"] == 1.0, (seed, name, plan)
            assert plan.predicted[key] == pytest.approx(truth[key], rel=1e-9, abs=1e-15), \
                (seed, name)
            ends = {plan.stages[0].device, plan.stages[-1].device}
            assert all(zones[d] == "home" for d in ends)
            if policy.max_cost_per_mtok is not None:
                assert plan.predicted["cost_per_mtok"] <= policy.max_cost_per_mtok + 1e-12
        checked += 1
    assert checked == 25


def test_cost_objective_and_limit() -> None:
    fleet = home_fleet(Policy())
    t = tables_for(B8, fleet, min_quality=0.999)
    cheapest = place_tables(t, "cost")
    assert cheapest.predicted["cost_per_mtok"] == 0.0  # the home devices are free
    fast = place_tables(t, "latency")
    assert fast.predicted["cost_per_mtok"] == pytest.approx(0.18)  # all cloud, full price
    capped = place_tables(tables_for(B8, replace(fleet, policy=Policy(max_cost_per_mtok=0.1)),
                                     min_quality=0.999))
    assert 0 < capped.predicted["cost_per_mtok"] <= 0.1  # part cloud, pro rata
    assert fast.predicted["per_token_s"] < capped.predicted["per_token_s"] \
        < cheapest.predicted["per_token_s"]


def test_policies_no_plan_can_keep_say_how_to_fix_them() -> None:
    with pytest.raises(PlanningError, match="add `zone: garage`"):
        tables_for(B8, home_fleet(Policy(keep_in="garage")))
    fleet = home_fleet()
    fleet = replace(fleet, devices=tuple(replace(d, zone="cloud" if d.id == "hub" else d.zone)
                                         for d in fleet.devices))
    with pytest.raises(PlanningError, match="entry 'hub' is in zone 'cloud'"):
        tables_for(B8, fleet)
    farm = replace(load_fleet(EXAMPLES / "farm.yaml").fleet,
                   policy=Policy(keep_in="farm", hidden_states=True))
    with pytest.raises(PlanningError, match="let hidden states leave the zone"):
        place_tables(tables_for(B8, farm))


def test_adapter_keeps_the_policy_when_it_replans() -> None:
    from edgeweave.plan.adapt import DeviceBack

    a = Adapter(home_fleet(), B8, "latency")
    assert a.fleet().policy == HOME
    assert "cloud" in {s.device for s in a.plan.stages}
    gone = a.on_event(DeviceGone("cloud"))
    back = a.on_event(DeviceBack("cloud"))
    assert gone.changed and back.changed
    fleet = home_fleet()
    for plan in (gone.plan, back.plan):
        assert zone_of(fleet, plan.stages[0].device) == "home"
        assert zone_of(fleet, plan.stages[-1].device) == "home"
    # without the policy the cloud's return would take every block
    assert len(back.plan.stages) > 1 and "cloud" in {s.device for s in back.plan.stages}


def test_fleet_file_policy_and_its_errors(tmp_path) -> None:
    from edgeweave.plan.fleet import fleet_from_dict

    base = yaml.safe_load((EXAMPLES / "smart-home.yaml").read_text())
    spec = fleet_from_dict({**base, "policy": {"keep_in": "home", "hidden_states": True}})
    assert spec.fleet.policy == Policy("home", True)
    assert spec.fleet.device("cloud").price_per_mtok == 0.18
    for bad, msg in (({"keep": "home"}, "unknown key 'keep'"),
                     ({"hidden_states": True}, "needs keep_in"),
                     ({"keep_in": "home", "max_cost_per_mtok": -1}, ">= 0"),
                     ("home", "policy must be a mapping")):
        with pytest.raises(ConfigError, match=msg):
            fleet_from_dict({**base, "policy": bad})
    with pytest.raises(ConfigError, match="price_per_mtok"):
        fleet_from_dict({**base, "devices": {**base["devices"],
                                             "cloud": {"class": "cloud-a100-80gb",
                                                       "price_per_mtok": "cheap"}}})


def test_cli_keep_in_and_explain(capsys) -> None:
    from edgeweave.cli.app import main
    from edgeweave.cli.common import console

    console.width = 240
    assert main(["plan", "--fleet", str(EXAMPLES / "smart-home.yaml"), "--model",
                 "llama-3.1-8b", "--min-quality", "0.999", "--keep-in", "home",
                 "--hidden-states-in-zone", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "tokens and hidden states stay in zone 'home'" in out
    assert "cloud: excluded by the policy" in out
    line = cli_error(capsys, ["plan", "--fleet", str(EXAMPLES / "smart-home.yaml"),
                              "--model", "llama-3.1-8b", "--keep-in", "attic"])
    assert "add `zone: attic`" in line
