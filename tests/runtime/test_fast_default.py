"""The fast path is the default path: one engine choice for every verb, nodes told which
backend to load, a process's own thread policy, and ONNX stages without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import httpx
import pytest

from edgeweave.cli.app import main
from edgeweave.errors import ConfigError
from edgeweave.runtime.local import EngineChoice, LocalModel, default_backend
from edgeweave.runtime.policy import ProcessPolicy
from edgeweave.serve.backend import LocalSessions
from edgeweave.serve.config import ServeConfig
from edgeweave.serve.server import BackgroundServer
from edgeweave.types import Plan

pytest.importorskip("onnxruntime")


def test_onnx_is_the_default_backend_and_choices_are_checked():
    assert default_backend() == "onnx"
    c = EngineChoice()
    assert (c.backend, c.variant) == ("onnx", "int4")
    with pytest.raises(ConfigError, match="choose one of onnx, torch"):
        EngineChoice("tensorrt")
    with pytest.raises(ConfigError, match="unknown variant 'int5'"):
        EngineChoice(variant="int5")
    with pytest.raises(ConfigError, match="cannot be built"):
        EngineChoice(variant="fp16")  # the planner prices it; no artifact makes it


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_generate_cli_runs_and_names_the_chosen_backend(tiny_folder, tmp_home, capsys, backend):
    assert main(["generate", "the sensor", "--model", str(tiny_folder), "-n", "4",
                 "--backend", backend, "--variant", "fp32"]) == 0
    out = capsys.readouterr().out
    assert f"{backend} fp32" in out


def test_server_reports_backend_and_variant_everywhere(tiny_folder, tmp_home):
    sessions = LocalSessions.load(str(tiny_folder), EngineChoice("onnx", "int8"))
    with BackgroundServer(sessions, ServeConfig(api_keys=("k",))) as url:
        auth = {"Authorization": "Bearer k"}
        health = httpx.get(f"{url}/health").json()
        models = httpx.get(f"{url}/v1/models", headers=auth).json()["data"][0]
        r = httpx.post(f"{url}/v1/completions", headers=auth,
                       json={"model": "tiny-llama", "prompt": "the sensor", "max_tokens": 3,
                             "temperature": 0}).json()
    want = {"backend": "onnx", "variant": "int8"}
    assert {k: health[k] for k in want} == want
    assert models["edgeweave"] == want
    assert {k: r["edgeweave"][k] for k in want} == want


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_the_coordinator_tells_nodes_which_backend_to_load(tiny_folder, tmp_home, backend):
    from edgeweave.runtime.launch import attach
    from edgeweave.runtime.stage import StageHost
    from edgeweave.runtime.transport.frame import Frame, Op
    from edgeweave.runtime.transport.grpc_server import serve

    hosts = [StageHost(str(tiny_folder), 1 << 30) for _ in range(2)]
    servers = [serve(h, "127.0.0.1:0") for h in hosts]
    try:
        plan = Plan.split(4, [2], ["a", "b"])
        coord = attach(plan, str(tiny_folder),
                       {d: f"127.0.0.1:{p}" for d, (_, p) in zip("ab", servers, strict=True)},
                       backend=backend).coordinator
        try:
            info = coord.call("b", Frame(Op.INFO), 10).json()
            assert [e["backend"] for e in info["engines"].values()] == [backend]
            assert coord.backend == backend
        finally:
            coord.close()
    finally:
        for s, _ in servers:
            s.stop(0)


def test_policy_comes_from_the_process_and_the_user_env_wins(monkeypatch):
    p = ProcessPolicy.for_this_process()
    assert p.cores == len(os.sched_getaffinity(0)) and p.intra_threads == p.cores
    assert p.ort_spinning == "auto"
    assert ProcessPolicy(4, threads=2).intra_threads == 2
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # a user's explicit choice
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    p.apply()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == "21"
    with pytest.raises(ConfigError):
        ProcessPolicy(0)


def test_a_node_started_by_hand_applies_its_own_policy(tiny_folder, tmp_home):
    """`edgeweave node` with a clean environment: the policy is the node's, reported in INFO
    (the launcher adds nothing, so hand-started and launched nodes are the same)."""
    from edgeweave.runtime.deployment import stop_processes
    from edgeweave.runtime.launch import node_command, spawn_node, wait_ready
    from edgeweave.runtime.transport.frame import Frame, Op
    from edgeweave.runtime.transport.grpc_link import GrpcLink

    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", "OMP_NUM_THREADS")}
    log = tmp_home.parent / "node.log"
    proc = spawn_node(node_command(str(tiny_folder), variant="fp32"), log, env)
    try:
        link = GrpcLink(wait_ready(proc, log), None, 10)
        info = link.call(Frame(Op.INFO), 10).json()
        link.close()
    finally:
        stop_processes([proc])
    pol = info["policy"]
    assert pol["applied"] and pol["ort_spinning"] == "auto"
    assert pol["env"]["OMP_WAIT_POLICY"] == "PASSIVE"
    assert pol["env"]["OPENBLAS_THREAD_TIMEOUT"] == "21"
    assert pol["threads"] == pol["cores"] == len(os.sched_getaffinity(0))


def test_an_onnx_stage_runs_from_its_cached_export_without_torch(tiny_folder, tmp_home):
    # build the export once (this test process has torch), then a fresh process reuses it
    LocalModel.load(str(tiny_folder), EngineChoice("onnx", "fp32"))
    code = textwrap.dedent(f"""
        import json, sys
        from edgeweave.runtime.local import EngineChoice, LocalModel
        from edgeweave.runtime.generate import SamplingParams, generate
        m = LocalModel.load({str(tiny_folder)!r}, EngineChoice("onnx", "fp32"))
        r = generate(m.new_session(64), m.tokenizer, "the sensor", SamplingParams(max_tokens=4))
        print(json.dumps({{"torch": "torch" in sys.modules, "reused":
                          m.engine.info["export_reused"], "n": len(r.token_ids)}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "EDGEWEAVE_HOME": str(tmp_home)}, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"torch": False, "reused": True, "n": 4}
