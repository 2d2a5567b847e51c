"""LoRA adapters over real gRPC stage nodes: the coordinator sends each stage its blocks'
factors (``Op.ADAPTER``), a session names its adapter when it opens, and a stage rebuilt on
another node after a failover gets the adapter too; bad ADAPTER/OPEN frames are refused
with the fix and the node keeps serving."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edgeweave.runtime.adapters import Factors, load_adapter, to_bytes
from edgeweave.runtime.engine import LocalEngine
from edgeweave.runtime.generate import SamplingParams, generate_step, stream_generate
from edgeweave.runtime.launch import launch
from edgeweave.runtime.transport.frame import ErrorCode, Frame, Op
from edgeweave.serve.backend import CoordinatorSessions
from edgeweave.types import Plan
from tests.adapter_helpers import PROMPT, world_fixture
from tests.runtime.node_helpers import RawStream, running_node

PARAMS = SamplingParams(max_tokens=16, ignore_eos=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    yield from world_fixture(tmp_path_factory)


def test_the_adapter_survives_a_killed_node_mid_stream(world):
    # Prepare: what the merged model says greedily, then three node processes
    from edgeweave.models.checkpoint import load_folder

    want = {name: list(generate_step(LocalEngine(world["merged"][name], 64), PROMPT, PARAMS))
            for name in ("home-a", "tiny-llama")}
    assert want["home-a"] != want["tiny-llama"]
    tok = load_folder(world["folder"]).tokenizer
    with launch(Plan.split(4, [1, 3], ["n0", "n1", "n2"]), str(world["folder"]), threads=1,
                max_len=64, backend="torch") as dep:
        sessions = CoordinatorSessions(dep.coordinator, tok, "tiny-llama")
        sessions.add_adapters(world["specs"])
        stream = stream_generate(sessions.new_session(64, adapter="home-a"), tok, PROMPT, PARAMS)
        pieces = [next(stream)]
        while sum(len(p.tokens) for p in pieces) < 5:
            pieces.append(next(stream))
        # Execute: SIGKILL the middle node between two tokens; n0 takes its stage over
        dep.kill("n1")
        pieces += list(stream)
        base = [t for r in stream_generate(sessions.new_session(64), tok, PROMPT, PARAMS)
                for t in r.tokens]
        plan = dep.coordinator.plan
    # Assert: the adapter's tokens, none lost or doubled, and the base's after it
    assert [t for p in pieces for t in p.tokens] == want["home-a"]
    assert pieces[-1].metrics.extra["failovers"] == 1
    assert [st.device for st in plan.stages] == ["n0", "n0", "n2"]
    assert base == want["tiny-llama"]


def test_a_node_refuses_bad_adapter_frames_and_keeps_serving(world):
    adapter = load_adapter(world["specs"][0])
    with running_node(world["merged"]["tiny-llama"], stages=((0, 4),)) as (host, address):
        s = RawStream(address)
        try:
            key = "0-4:fp32"
            r = s.ask(Frame(Op.OPEN, key, "x", arg=16, payload=b'{"adapter": "home-a"}'))
            assert r.op == Op.ERROR and r.arg == ErrorCode.NO_ADAPTER
            assert "send it (ADAPTER)" in r.payload.decode()
            r = s.ask(Frame(Op.ADAPTER, key, payload=b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage"))
            assert r.op == Op.ERROR and "not an adapter" in r.payload.decode()
            narrow = replace(adapter, name="narrow", factors={
                (0, "q_proj"): Factors(np.ones((2, 32), np.float32), np.ones((64, 2), np.float32))})
            r = s.ask(Frame(Op.ADAPTER, key, payload=to_bytes(narrow, 0, 4)))
            assert r.op == Op.ERROR and "trained on another model" in r.payload.decode()
            r = s.ask(Frame(Op.OPEN, key, "x", arg=16, payload=b'["home-a"]'))
            assert r.op == Op.ERROR and r.arg == ErrorCode.BAD_FRAME
            assert s.ask(Frame(Op.ADAPTER, key, payload=to_bytes(adapter, 0, 4))).op == Op.OK
            assert s.ask(Frame(Op.ADAPTER, key, payload=to_bytes(adapter, 0, 4))).op == Op.OK
            r = s.ask(Frame(Op.OPEN, key, "x", arg=16, payload=b'{"adapter": "home-a"}'))
            assert r.op == Op.OK
            assert host.engines[key].adapters() == ["home-a"]
        finally:
            s.close()
