"""Pipelined prefill over gRPC nodes on 127.0.0.1: same tokens as a sequential prefill,
records that replay exactly after a failover, chunk edge cases."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import numpy as np
import pytest

from edgeweave.errors import ConfigError
from edgeweave.runtime.coordinator import Coordinator
from edgeweave.runtime.engines.torch import TorchStageEngine
from edgeweave.runtime.generate import SamplingParams, generate_step
from edgeweave.runtime.launch import attach, embedded
from edgeweave.runtime.payload import x_tokens
from edgeweave.runtime.pipeline import chunk_sizes
from edgeweave.types import Plan
from tests.runtime.node_helpers import running_node

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PARAMS = SamplingParams(max_tokens=12, ignore_eos=True)
CHUNK = 16
PROMPT = [int(t) for t in np.random.default_rng(3).integers(3, 128, size=100)]
SHARDS = {2: ((0, 2), (2, 4)), 3: ((0, 1), (1, 3), (3, 4))}


@contextmanager
def nodes(model, n: int, engine: type[TorchStageEngine] = TorchStageEngine, **kw
          ) -> Iterator[tuple[dict[str, str], list]]:
    """``n`` gRPC nodes of ``model`` (``n0``, ``n1``, ...) each able to serve any stage."""
    with ExitStack() as stack:
        addrs, servers = {}, []
        for j in range(n):
            host, addr = stack.enter_context(running_node(model, SHARDS[n], engine=engine, **kw))
            addrs[f"n{j}"] = addr
            servers.append(host)
        yield addrs, servers


def coordinator(addrs: dict[str, str], chunk: int, **kw) -> Coordinator:
    n = len(addrs)
    cuts = [end for _, end in SHARDS[n][:-1]]
    plan = Plan.split(4, cuts, list(addrs))
    return attach(plan, "mem", addrs, tokenizer=None, backend="torch", max_len=160,
                  pipeline_chunk=chunk, **kw).coordinator


@pytest.mark.parametrize("stages", [2, 3])
def test_pipelined_prefill_gives_the_sequential_tokens(tiny_model, stages):
    # Prepare
    with nodes(tiny_model, stages) as (addrs, _):
        seq, pipe = coordinator(addrs, 0), coordinator(addrs, CHUNK)
        # Execute
        with seq.new_session() as a, pipe.new_session() as b:
            la, lb = a.prefill(PROMPT), b.prefill(PROMPT)
            a.close(), b.close()
            ta = list(generate_step(seq.new_session(), PROMPT, PARAMS))
            tb = list(generate_step(pipe.new_session(), PROMPT, PARAMS))
            # Assert: fp32 throughout, only the chunking differs
            np.testing.assert_allclose(la, lb, rtol=1e-4, atol=1e-4)
            assert ta == tb
            assert [len(r) for r in a.records] == [1] * stages  # sequential: one chunk
            assert [len(r) for r in b.records] == [7] * stages  # 100 tokens: 7 x 14-15
            assert b.length == a.length == len(PROMPT)
        seq.close(), pipe.close()


def test_each_stage_records_exactly_what_it_received(tiny_model):
    with nodes(tiny_model, 3) as (addrs, _):
        coord = coordinator(addrs, CHUNK)
        s = coord.new_session()
        s.prefill(PROMPT[:40])
        s.extend(PROMPT[40:])  # a later step of the prompt is pipelined too
        sizes = chunk_sizes(40, CHUNK) + chunk_sizes(60, CHUNK)
        for i, rec in enumerate(s.records):
            assert [x_tokens(x) for x in rec] == sizes
            if i:  # stage i received stage i - 1's hidden states: (1, T, H)
                assert all(x.shape[2] == tiny_model.cfg.hidden_size for x in rec)
        got = np.concatenate([np.frombuffer(x.data, "<i4") for x in s.records[0]])
        assert got.tolist() == PROMPT and s.length == len(PROMPT)
        coord.close()


def test_failover_right_after_a_pipelined_prefill_replays_exactly(tiny_model):
    from edgeweave.runtime.stage import StageHost
    from edgeweave.runtime.transport.grpc_server import serve

    # Prepare: the same pipelined prefill twice, one of them losing its middle node after it
    with nodes(tiny_model, 3) as (addrs, _):
        calm = coordinator(addrs, CHUNK)
        want = list(generate_step(calm.new_session(), PROMPT, PARAMS))
        calm.close()
    with ExitStack() as stack:
        addrs, servers = {}, []
        for j in range(3):  # nodes this test can stop
            host = StageHost("mem", engine_factory=lambda cfg: TorchStageEngine(
                cfg, model=tiny_model))
            server, port = serve(host, "127.0.0.1:0")
            stack.callback(server.stop, 0)
            servers.append(server)
            addrs[f"n{j}"] = f"127.0.0.1:{port}"
        coord = coordinator(addrs, CHUNK)
        s = coord.new_session()
        gen = generate_step(s, PROMPT, PARAMS)
        got = [next(gen)]  # the prefill ran, pipelined
        assert [len(r) for r in s.records] == [7, 7, 7]
        # Execute: the middle node dies between the prefill and the first decode step
        servers[1].stop(0)
        got += list(gen)
        # Assert: stage 1 moved, was rebuilt from its recorded chunks, nothing lost or doubled
        assert got == want
        assert [st.device for st in coord.plan.stages] == ["n0", "n0", "n2"]
        assert s.stats["failovers"] == 1 and s.stats["replayed_tokens"] >= len(PROMPT)
        coord.close()


class Overlapping(TorchStageEngine):
    """Counts forwards running at once across every node of the test; each one lasts a
    little longer than its compute, so two stages that can overlap do."""

    lock = threading.Lock()
    now = 0
    most = 0

    def forward(self, session_id, x):
        cls = type(self)
        with cls.lock:
            cls.now += 1
            cls.most = max(cls.most, cls.now)
        try:
            time.sleep(0.02)
            return super().forward(session_id, x)
        finally:
            with cls.lock:
                cls.now -= 1


def test_stages_really_run_at_once(tiny_model):
    with nodes(tiny_model, 3, engine=Overlapping) as (addrs, _):
        seq, pipe = coordinator(addrs, 0), coordinator(addrs, CHUNK)
        Overlapping.most = 0
        seq.new_session().prefill(PROMPT)
        assert Overlapping.most == 1
        pipe.new_session().prefill(PROMPT)
        assert Overlapping.most >= 2
        seq.close(), pipe.close()


class HangOnce(TorchStageEngine):
    """Misses the coordinator's deadline on the third chunk it is given, once."""

    calls = 0

    def forward(self, session_id, x):
        HangOnce.calls += 1
        if HangOnce.calls == 3:
            time.sleep(1.5)
        return super().forward(session_id, x)


def test_a_node_lost_mid_prefill_retries_the_whole_step(tiny_model):
    # Prepare: the last stage's node hangs in the middle of the pipelined prefill
    with nodes(tiny_model, 3) as (addrs, _):
        calm = coordinator(addrs, CHUNK)
        want = list(generate_step(calm.new_session(), PROMPT, PARAMS))
        calm.close()
    with ExitStack() as stack:
        addrs = {}
        for j, engine in enumerate((TorchStageEngine, TorchStageEngine, HangOnce)):
            _, addrs[f"n{j}"] = stack.enter_context(running_node(tiny_model, SHARDS[3],
                                                                 engine=engine))
        HangOnce.calls = 0
        coord = coordinator(addrs, CHUNK, deadline_s=0.5, per_token_s=0.0)
        s = coord.new_session()
        # Execute
        got = list(generate_step(s, PROMPT, PARAMS))
        # Assert: the half-done step was dropped and retried on the survivors
        assert got == want
        assert [st.device for st in coord.plan.stages] == ["n0", "n1", "n1"]
        assert s.stats["failovers"] == 1
        assert [sum(x_tokens(x) for x in r) for r in s.records] == [s.length] * 3
        coord.close()


@pytest.mark.parametrize("n,chunk,sizes", [
    (10, 16, [10]),  # shorter than a chunk: one piece
    (16, 16, [16]),  # exactly one chunk
    (64, 16, [16, 16, 16, 16]),  # an exact multiple
    (33, 16, [11, 11, 11]),  # 16 + 16 + 1 would leave a single token
    (17, 16, [9, 8]),
    (3, 2, [3]),  # 2 + 1: one piece rather than a one-token one
    (100, 0, [100]),  # off
])
def test_chunk_sizes(n, chunk, sizes):
    got = chunk_sizes(n, chunk)
    assert got == sizes and sum(got) == n and min(got) >= 2
    assert len(got) == 1 or max(got) <= chunk


def test_short_and_exact_prompts_over_nodes(tiny_model):
    with nodes(tiny_model, 2) as (addrs, _):
        coord = coordinator(addrs, CHUNK)
        for n, pieces in ((10, 1), (CHUNK, 1), (4 * CHUNK, 4), (2 * CHUNK + 1, 3)):
            with coord.new_session() as s:
                s.prefill(PROMPT[:n])
                assert [len(r) for r in s.records] == [pieces, pieces]
                assert min(x_tokens(x) for x in s.records[0]) >= 2
        coord.close()


def test_embedded_plans_stay_sequential_and_chunk_is_checked(tiny_folder):
    dep = embedded(str(tiny_folder), Plan.split(4, [1, 3], ["a", "b", "c"]), backend="torch",
                   max_len=160, pipeline_chunk=CHUNK)
    with dep.coordinator.new_session() as s:
        s.prefill(PROMPT)
        assert [len(r) for r in s.records] == [1, 1, 1]  # in-process links: not pipelined
    dep.close()
    with pytest.raises(ConfigError, match="pipeline_chunk"):
        embedded(str(tiny_folder), backend="torch", pipeline_chunk=-1)
