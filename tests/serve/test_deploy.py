"""Options of `edgeweave serve` turned into a backend: local, embedded plan, plan + MQTT."""

from __future__ import annotations

import json

import pytest

from edgeweave.control.broker import Mosquitto
from edgeweave.errors import ConfigError
from edgeweave.runtime.generate import SamplingParams, generate
from edgeweave.runtime.local import EngineChoice
from edgeweave.serve.backend import CoordinatorSessions, LocalSessions
from edgeweave.serve.deploy import build, parse_nodes, read_plan
from edgeweave.types import Plan


def test_option_parsing_errors_say_the_fix(tmp_path):
    assert parse_nodes(["a=127.0.0.1:5001"]) == {"a": "127.0.0.1:5001"}
    with pytest.raises(ConfigError, match="DEVICE=HOST:PORT"):
        parse_nodes(["a:5001"])
    bad = tmp_path / "plan.json"
    bad.write_text('{"stages": [{"device": "a"}]}')
    with pytest.raises(ConfigError, match="is not a plan"):
        read_plan(bad)
    with pytest.raises(ConfigError, match="--node: need --plan or --fleet-file"):
        build("whatever", nodes=["a=127.0.0.1:1883"])


def test_plan_file_gives_an_embedded_coordinator_watched_over_mqtt(tiny_folder, tmp_path):
    plan = Plan.split(4, [2], ["a", "b"])
    f = tmp_path / "plan.json"
    f.write_text(json.dumps({"plan": plan.to_dict()}))
    # the plan file's stages are fp32, on the default backend: the same engine, unsplit
    local = LocalSessions.load(str(tiny_folder), EngineChoice(variant="fp32"))
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    ref = generate(local.new_session(), local.tokenizer, "the sensor reads", params)
    with Mosquitto() as broker:
        stack = build(str(tiny_folder), plan=f, mqtt=f"{broker.host}:{broker.port}", fleet="t")
        try:
            assert isinstance(stack.backend, CoordinatorSessions)
            assert stack.backend.engine_info() == local.engine_info() == {
                "backend": "onnx", "variant": "fp32"}
            assert stack.backend.coordinator.plan == plan and stack.backend.model_id == "tiny-llama"
            out = generate(stack.backend.new_session(64), stack.backend.tokenizer,
                           "the sensor reads", params)
            assert out.token_ids == ref.token_ids
        finally:
            stack.close()


def test_fleet_file_alone_serves_the_planners_placement_and_adapts(tiny_folder, tmp_path):
    from pathlib import Path

    home = Path(__file__).resolve().parents[2] / "examples" / "fleets" / "home.yaml"
    stack = build(str(tiny_folder), fleet_file=home)
    try:
        coord = stack.backend.coordinator
        assert {s.device for s in coord.plan.stages} <= {"hub", "gateway", "edge"}
        assert {s.variant for s in coord.plan.stages} == {"fp32"}
        out = generate(stack.backend.new_session(64), stack.backend.tokenizer, "hello",
                       SamplingParams(max_tokens=4, ignore_eos=True))
        assert len(out.token_ids) == 4
        f = tmp_path / "plan.json"
        f.write_text(json.dumps({"plan": coord.plan.to_dict()}))
    finally:
        stack.close()
    # with a plan, --mqtt watches the fleet file's fleet with the adapter's battery marks
    # (--mqtt without a plan discovers the nodes instead: tests/control/test_assembly.py)
    with Mosquitto() as broker:
        stack = build(str(tiny_folder), plan=f, fleet_file=home,
                      mqtt=f"{broker.host}:{broker.port}")
        try:
            monitor = stack.closers[0].__self__
            assert monitor.fleet == "home" and monitor.config.battery_low == 0.2
        finally:
            stack.close()


def test_keep_in_on_serve_keeps_every_stage_at_home_and_refuses_a_cloud_plan(tiny_folder,
                                                                          tmp_path):
    from pathlib import Path

    from edgeweave.serve.deploy import PolicyOptions

    fleet = Path(__file__).resolve().parents[2] / "examples" / "fleets" / "smart-home.yaml"
    free = build(str(tiny_folder), fleet_file=fleet)
    try:  # without a policy the cloud GPU is the fastest place for the blocks
        assert "cloud" in {s.device for s in free.backend.coordinator.plan.stages}
    finally:
        free.close()
    home = PolicyOptions(keep_in="home", hidden_states=True)
    stack = build(str(tiny_folder), fleet_file=fleet, policy=home)
    try:
        stages = stack.backend.coordinator.plan.stages
        assert {s.device for s in stages} <= {"hub", "pi4", "minipc"}
        out = generate(stack.backend.new_session(64), stack.backend.tokenizer, "hello",
                       SamplingParams(max_tokens=4, ignore_eos=True))
        assert len(out.token_ids) == 4
    finally:
        stack.close()
    cloud = tmp_path / "cloud.json"
    n = stages[-1].shard.n_layers
    cloud.write_text(json.dumps(Plan.split(n, [], ["cloud"]).to_dict()))
    with pytest.raises(ConfigError, match="breaks the fleet's policy"):
        build(str(tiny_folder), plan=cloud, fleet_file=fleet, policy=home)
    with pytest.raises(ConfigError, match="need --fleet-file"):
        build(str(tiny_folder), policy=PolicyOptions(keep_in="home"))
