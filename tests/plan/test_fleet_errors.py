"""Bad fleet files and plan options: one ConfigError line with the fix, never a traceback."""

from __future__ import annotations

import contextlib
import copy
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeweave.errors import ConfigError, EdgeweaveError
from edgeweave.plan.fleet import fleet_from_dict, load_fleet
from edgeweave.plan.tables import Constraints
from tests.helpers import cli_error
from tests.helpers import mutations as shared_mutations

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "fleets"
BASE = {"name": "t", "entry": "hub",
        "devices": {"hub": {"class": "rpi4-4gb", "battery": 0.8, "artifacts": ["int8"]},
                    "gw": {"class": "minipc-n100", "memory_pressure": 0.1}},
        "links": [["hub", "gw", "wifi5"]]}
LINK = {"a": "hub", "b": "gw", "class": "wifi5", "bandwidth_scale": 0.5}


def write(tmp_path: Path, doc: object, name: str = "fleet.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc))
    return p


def with_device(**hub: object) -> dict:
    doc = copy.deepcopy(BASE)
    doc["devices"]["hub"].update(hub)
    return doc




def test_the_base_document_is_valid(tmp_path: Path) -> None:
    spec = load_fleet(write(tmp_path, BASE))
    assert spec.fleet.device("hub").battery == 0.8
    spec = load_fleet(write(tmp_path, {**BASE, "links": [LINK]}))
    assert spec.fleet.links[0].bandwidth_scale == 0.5


@pytest.mark.parametrize("doc,needles", [
    (with_device(battery="high"), ["battery must be a number", "'high'", "unquoted"]),
    (with_device(battery=[1]), ["battery must be a number", "a list"]),
    (with_device(memory_pressure="lots"), ["memory_pressure must be a number", "'lots'"]),
    (with_device(artifacts=5), ["artifacts must be a list", "[int8, int4]"]),
    (with_device(artifacts="int8"), ["artifacts must be a list"]),
    ({**BASE, "links": [{**LINK, "bandwidth_scale": "fast"}]},
     ["bandwidth_scale must be a number", "'fast'"]),
    ({**BASE, "links": [{**LINK, "bandwidth_scale": math.nan}]},
     ["bandwidth_scale must be a finite number"]),
    ({**BASE, "artifacts": ["a", "b"]}, ["artifacts must be a mapping", "variant name"]),
    ({**BASE, "artifacts": {"int4": 5}}, ["artifact 'int4' must be a folder path"]),
    ({**BASE, "links": 5}, ["links must be a list"]),
    ({**BASE, "links": [["hub", "gw"]]}, ["has 2 items", "[a, b, class]"]),
    ({**BASE, "links": ["hub-gw"]}, ["a link is [a, b, class]"]),
    ({**BASE, "links": [["hub", "gw", 5]]}, ["class must be a class name", "wifi5"]),
    ({**BASE, "entry": True}, ["boolean", "quote the name"]),
    ({**BASE, "devices": {"hub": ["rpi4-4gb"]}, "links": []}, ["needs a `class`"]),
    ([BASE], ["non-empty `devices` mapping", "a list"]),
])
def test_wrong_types_name_the_field_and_the_fix(tmp_path: Path, doc: object,
                                               needles: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        load_fleet(write(tmp_path, doc))
    for needle in needles:
        assert needle in str(e.value)


@pytest.mark.parametrize("doc,needle", [
    ({**BASE, "entery": "gw"}, "unknown key 'entery' (did you mean 'entry'?); allowed keys: "
                               "artifacts, devices, entry, exit, links, name"),
    (with_device(batery=0.5), "device 'hub': unknown key 'batery' (did you mean 'battery'?)"),
    ({**BASE, "links": [{**LINK, "bandwith_scale": 2}]},
     "unknown key 'bandwith_scale' (did you mean 'bandwidth_scale'?)"),
    ({**BASE, "colour": "red"}, "unknown key 'colour'; allowed keys"),
])
def test_unknown_keys_are_refused_with_the_closest_allowed_one(tmp_path: Path, doc: dict,
                                                                needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_fleet(write(tmp_path, doc))
    assert needle in str(e.value)


def test_a_binary_fleet_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "fleet.yaml"
    p.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match="is not a text file .*examples/fleets"):
        load_fleet(p)


def test_a_yaml_syntax_error_is_one_line(tmp_path: Path, capsys) -> None:
    p = tmp_path / "fleet.yaml"
    p.write_text("devices: {hub: [\n  gw: x\n")
    err = cli_error(capsys, ["plan", "--fleet", str(p)])
    assert "not valid YAML" in err and "line" in err


@pytest.mark.parametrize("doc", [
    with_device(battery="high"), {**BASE, "links": 5}, {**BASE, "entery": "gw"},
    {**BASE, "artifacts": ["a"]}, with_device(artifacts=5),
])
def test_cli_prints_one_line_and_exits_2(tmp_path: Path, capsys, doc: dict) -> None:
    cli_error(capsys, ["plan", "--fleet", str(write(tmp_path, doc))])


def test_cli_refuses_a_binary_fleet_file(tmp_path: Path, capsys) -> None:
    p = tmp_path / "fleet.bin"
    p.write_bytes(bytes(range(256)))
    assert "is not a text file" in cli_error(capsys, ["plan", "--fleet", str(p)])


@pytest.mark.parametrize("flag,value", [("--battery-reserve", "-3"), ("--battery-reserve", "1.5"),
                                        ("--battery-reserve", "nan"), ("--min-quality", "2")])
def test_plan_fractions_outside_0_1_are_refused(capsys, flag: str, value: str) -> None:
    err = cli_error(capsys, ["plan", "--fleet", str(EXAMPLES / "home.yaml"), flag, value])
    assert "must be a number in [0, 1]" in err and flag in err


def test_constraints_validate_for_the_python_api_too() -> None:
    with pytest.raises(ConfigError, match=r"battery_reserve must be a number in \[0, 1\]"):
        Constraints(battery_reserve=-3)
    with pytest.raises(ConfigError, match="unknown codec"):
        Constraints(codecs=("fp8",))
    Constraints(min_quality=1.0, battery_reserve=0.0)


# -- fuzz: any document loads or raises an EdgeweaveError, nothing else ---------------------
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
KEYS = ["name", "entry", "exit", "artifacts", "devices", "links", "class", "battery",
        "memory_pressure", "a", "b", "bandwidth_scale", "hub", "gw", "host"]
scalars = (st.none() | st.booleans() | st.integers() | st.floats()
           | st.sampled_from(["hub", "gw", "wifi5", "rpi4-4gb", "int8", "~nobody/x", "\x00"])
           | st.text(max_size=10))
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6) | st.integers(), inner,
                      max_size=4), max_leaves=16)


mutations = shared_mutations(values)


def _examples() -> list[dict]:
    return [BASE, {**BASE, "links": [LINK]},
            *(yaml.safe_load(p.read_text()) for p in sorted(EXAMPLES.glob("*.yaml")))]


@pytest.fixture(autouse=True, scope="module")
def _own_home(tmp_path_factory: pytest.TempPathFactory):
    # class `host` reads the probed profile: keep the fuzz off the real cache folder
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEWEAVE_HOME", str(tmp_path_factory.mktemp("home")))
        yield


def _loads_or_refuses(doc: object) -> None:
    with contextlib.suppress(EdgeweaveError):  # any other exception fails the test
        fleet_from_dict(doc, "fuzz.yaml")  # type: ignore[arg-type]


@FUZZ
@given(values)
def test_fuzz_arbitrary_documents(doc: object) -> None:
    _loads_or_refuses(doc)


@FUZZ
@given(st.sampled_from(_examples()).flatmap(mutations))
def test_fuzz_mutated_valid_fleets(doc: object) -> None:
    _loads_or_refuses(doc)


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_fuzz_fleet_file_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    p = tmp_path_factory.getbasetemp() / "fuzz-fleet.yaml"
    p.write_bytes(data)
    with contextlib.suppress(EdgeweaveError):
        load_fleet(p)
