"""Fleet files: the examples load and plan; bad fleets fail naming the culprit."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgeweave.errors import ConfigError, PlanningError
from edgeweave.plan import place
from edgeweave.plan.fleet import load_fleet
from edgeweave.profile.cost import ModelCosts
from tests.conftest import make_cfg

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "fleets"
SMOL = make_cfg(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                num_heads=9, num_kv_heads=3, head_dim=64, tie_word_embeddings=True)


def write(tmp_path: Path, doc: dict) -> Path:
    p = tmp_path / "fleet.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


BASE = {"name": "t", "entry": "hub", "devices": {"hub": {"class": "rpi4-4gb"},
                                                   "gw": {"class": "minipc-n100"}},
        "links": [["hub", "gw", "wifi5"]]}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_examples_load_and_plan(path: Path) -> None:
    spec = load_fleet(path)
    for objective in ("latency", "ttft", "energy", "throughput"):
        plan = place(SMOL, spec.fleet, objective, variants=spec.variants)
        assert plan.predicted["feasible"] == 1.0
        assert all(s.device in spec.fleet.ids for s in plan.stages)


def test_home_example_is_the_demo_fleet() -> None:
    fleet = load_fleet(EXAMPLES / "home.yaml").fleet
    assert {d.profile.tier for d in fleet.devices} >= {"sbc", "gateway", "edge"}
    assert fleet.entry == "hub"


def test_unknown_device_class_names_it_and_lists_known(tmp_path: Path) -> None:
    doc = {**BASE, "devices": {**BASE["devices"], "cam": {"class": "raspberry-pi-9"}}}
    with pytest.raises(ConfigError) as e:
        load_fleet(write(tmp_path, doc))
    msg = str(e.value)
    assert "'raspberry-pi-9'" in msg and "'cam'" in msg and "rpi5-8gb" in msg


def test_unknown_link_class(tmp_path: Path) -> None:
    doc = {**BASE, "links": [["hub", "gw", "carrier-pigeon"]]}
    with pytest.raises(ConfigError, match="carrier-pigeon.*known classes: .*ethernet"):
        load_fleet(write(tmp_path, doc))


def test_disconnected_graph_names_the_unreachable_devices(tmp_path: Path) -> None:
    doc = {**BASE, "devices": {**BASE["devices"], "island": {"class": "rpi5-8gb"},
                               "atoll": {"class": "rpi5-8gb"}},
           "links": [["hub", "gw", "wifi5"], ["island", "atoll", "ethernet"]]}
    with pytest.raises(ConfigError, match="disconnected: atoll, island cannot reach the entry"):
        load_fleet(write(tmp_path, doc))


def test_link_to_unknown_device_and_bad_entry(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown device 'ghost'"):
        load_fleet(write(tmp_path, {**BASE, "links": [["hub", "ghost", "wifi5"]]}))
    with pytest.raises(ConfigError, match="entry/exit 'nowhere'"):
        load_fleet(write(tmp_path, {**BASE, "entry": "nowhere"}))


def test_bad_values(tmp_path: Path) -> None:
    doc = {**BASE, "devices": {"hub": {"class": "rpi4-4gb", "battery": 1.7}}, "links": []}
    with pytest.raises(ConfigError, match="battery must be in"):
        load_fleet(write(tmp_path, doc))
    doc = {**BASE, "devices": {"hub": {"class": "rpi4-4gb", "colour": "red"}}, "links": []}
    with pytest.raises(ConfigError, match="unknown key .colour."):
        load_fleet(write(tmp_path, doc))
    with pytest.raises(ConfigError, match="unknown artifacts"):
        load_fleet(write(tmp_path, {**BASE, "devices": {"hub": {"class": "rpi4-4gb",
                                                                "artifacts": ["int3"]}},
                                    "links": []}))


def test_model_that_fits_nowhere_names_model_and_devices(tmp_path: Path) -> None:
    doc = {"name": "tiny", "entry": "s1", "devices": {"s1": "esp32-s3", "s2": "esp32-s3"},
           "links": [["s1", "s2", "ble"]]}
    fleet = load_fleet(write(tmp_path, doc)).fleet
    big = ModelCosts.from_config(SMOL, "smollm2")
    with pytest.raises(PlanningError) as e:
        place(big, fleet)
    msg = str(e.value)
    assert "'smollm2' fits nowhere" in msg and "s1" in msg and "s2" in msg
    assert "Add a device" in msg


def test_host_class_needs_a_profile(tmp_path: Path, tmp_home: Path) -> None:
    doc = {**BASE, "devices": {"hub": {"class": "host"}}, "links": []}
    with pytest.raises(ConfigError, match="edgeweave profile"):
        load_fleet(write(tmp_path, doc))
