"""Kill a node mid-stream: the stream completes with the same tokens, recovery is timed."""

from __future__ import annotations

import torch

from edgeweave.runtime.engine import LocalEngine
from edgeweave.runtime.generate import SamplingParams, generate_step, stream_generate
from edgeweave.runtime.launch import launch
from edgeweave.runtime.replan import first_change, reassign_failed
from edgeweave.types import Plan
from tests.conftest import make_cfg, random_model, save_folder

PROMPT = [1, 5, 9, 17, 33, 3, 40, 41]
PARAMS = SamplingParams(max_tokens=24, ignore_eos=True)


def test_reassign_failed_is_pure_and_keeps_boundaries():
    plan = Plan.split(30, [10, 20], ["a", "b", "c"], codec="fp16")
    new = reassign_failed(plan, {"b"}, ["a", "c"])
    assert [s.device for s in new.stages] == ["a", "a", "c"]
    assert [s.shard for s in new.stages] == [s.shard for s in plan.stages]
    assert first_change(plan, new) == 1
    assert [s.device for s in reassign_failed(plan, {"a"}, ["b", "c"]).stages] == ["b", "b", "c"]
    assert [s.device for s in reassign_failed(plan, {"a", "b"}, ["c"]).stages] == ["c"] * 3


def test_killed_node_mid_stream(tmp_path):
    # Prepare: a reference from one process, then three real nodes
    from edgeweave.models import load

    model = random_model(make_cfg(), seed=5)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = list(generate_step(LocalEngine(model, max_len=128), PROMPT, PARAMS))
    finally:
        torch.set_num_threads(before)
    lm = load(str(save_folder(model, tmp_path / "tiny")))
    with launch(Plan.split(4, [1, 3], ["n0", "n1", "n2"]), str(lm.folder), threads=1,
                max_len=128) as dep:
        s = dep.coordinator.new_session()
        stream = stream_generate(s, lm.tokenizer, PROMPT, PARAMS)
        pieces = [next(stream)]
        while sum(len(p.tokens) for p in pieces) < 6:
            pieces.append(next(stream))
        # Execute: SIGKILL the middle node between two tokens of the stream
        dep.kill("n1")
        pieces += list(stream)
        plan = dep.coordinator.plan
    # Assert: nothing lost, nothing doubled, same greedy tokens
    got = [t for p in pieces for t in p.tokens]
    assert got == reference
    before_kill, final = pieces[0].metrics.extra, pieces[-1].metrics.extra
    assert before_kill["failovers"] == 0
    assert final["failovers"] == 1 and 0 < final["recovery_s"] < 30
    assert final["replayed_tokens"] >= len(PROMPT)
    assert [st.device for st in plan.stages] == ["n0", "n0", "n2"]


def test_hung_node_is_detected_by_the_deadline(tiny_model):
    # Prepare: two in-process gRPC nodes; the second one stops answering after a few tokens
    import threading
    import time

    from edgeweave.runtime.engines.torch import TorchStageEngine
    from edgeweave.runtime.launch import attach
    from edgeweave.runtime.stage import StageHost
    from edgeweave.runtime.transport.grpc_server import serve

    hang = threading.Event()

    class Hanging(TorchStageEngine):
        def forward(self, session_id, x):
            if hang.is_set():
                time.sleep(3)  # far past the coordinator's 0.5 s deadline
            return super().forward(session_id, x)

    servers, addrs = [], {}
    for name, cls in (("fast", TorchStageEngine), ("slow", Hanging)):
        host = StageHost("mem", engine_factory=lambda cfg, cls=cls: cls(cfg, model=tiny_model))
        server, port = serve(host, "127.0.0.1:0")
        servers.append(server)
        addrs[name] = f"127.0.0.1:{port}"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = list(generate_step(LocalEngine(tiny_model, max_len=128), PROMPT, PARAMS))
        coord = attach(Plan.split(4, [2], ["fast", "slow"]), "mem", addrs, tokenizer=None,
                       max_len=128, deadline_s=0.5, per_token_s=0.0).coordinator
        s = coord.new_session()
        gen = generate_step(s, PROMPT, PARAMS)
        got = [next(gen) for _ in range(4)]
        # Execute
        hang.set()
        got += list(gen)
        # Assert: the step past the deadline failed over to "fast", nothing lost or doubled
        assert got == reference
        assert [st.device for st in coord.plan.stages] == ["fast", "fast"]
        assert s.stats["failovers"] == 1 and s.stats["stall_s"] < 3
        coord.close()
    finally:
        torch.set_num_threads(before)
        for server in servers:
            server.stop(0)
