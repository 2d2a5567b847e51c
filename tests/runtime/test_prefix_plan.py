"""The prefix cache across a split plan: donors on real gRPC nodes (127.0.0.1).

The coordinator keeps one donor per kept prompt at every stage (SAVE_PREFIX), fills a new
session from it at every stage (LOAD_PREFIX); nodes count donors against their memory cap
and evict them before any session. Greedy tokens equal those of the same plan without the
cache, through an eviction of a donor and through a failover of a session that was filled
from one (its replay needs the donor's inputs, which the coordinator kept).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from edgeweave.models import load
from edgeweave.runtime.codec import IDS
from edgeweave.runtime.engines.base import EngineConfig
from edgeweave.runtime.engines.torch import TorchStageEngine
from edgeweave.runtime.generate import SamplingParams
from edgeweave.runtime.launch import attach
from edgeweave.runtime.sequence import Generation, advance
from edgeweave.runtime.stage import StageHost
from edgeweave.runtime.transport.frame import ErrorCode, Frame, Op
from edgeweave.runtime.transport.grpc_server import serve
from edgeweave.types import Plan, Shard
from tests.conftest import make_cfg, random_model, save_folder
from tests.runtime.test_prefix_cache import CACHED, PROMPTS

PARAMS = SamplingParams(max_tokens=12, ignore_eos=True)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lm(tmp_path_factory):  # type: ignore[no-untyped-def]
    folder = save_folder(random_model(make_cfg(), seed=3), tmp_path_factory.mktemp("m") / "t")
    return load(str(folder))


@contextmanager
def grpc_nodes(model, names, cap: int = 1 << 30) -> Iterator[dict]:  # type: ignore[no-untyped-def]
    """Nodes that can load any stage of ``model``: name -> (host, server, address)."""
    out = {}
    try:
        for name in names:
            host = StageHost("mem", cap, engine_factory=lambda cfg: TorchStageEngine(
                cfg, model=model))
            server, port = serve(host, "127.0.0.1:0")
            out[name] = (host, server, f"127.0.0.1:{port}")
        yield out
    finally:
        for _, server, _ in out.values():
            server.stop(0)


def _coordinator(lm, nodes, plan, cache: int):  # type: ignore[no-untyped-def]
    return attach(plan, str(lm.folder), {n: a for n, (_, _, a) in nodes.items()},
                  tokenizer=lm.tokenizer, backend="torch", max_len=128,
                  prefix_cache_bytes=cache, deadline_s=5.0).coordinator


def _generate(coord, lm, prompt, on_token=None):  # type: ignore[no-untyped-def]
    s = coord.new_session(len(prompt) + PARAMS.max_tokens)
    gen = Generation(s, lm.tokenizer, prompt, PARAMS)
    while not gen.finished:
        gen.feed(advance(s, gen.next_input(16)))
        if on_token is not None:
            on_token(len(gen.tokens))
    extra = gen.metrics().extra
    s.close()
    return gen.tokens, gen.cached_tokens, extra


def test_a_split_plan_reuses_prefixes_on_every_stage_with_the_same_tokens(lm):
    plan = Plan.split(4, [2], ["a", "b"], codec="fp16")
    with grpc_nodes(lm.model, ["a", "b"]) as nodes:
        cold = _coordinator(lm, nodes, plan, 0)
        want = [_generate(cold, lm, p)[0] for p in PROMPTS]
        cold.close()
        coord = _coordinator(lm, nodes, plan, 64 << 20)
        got = [_generate(coord, lm, p) for p in PROMPTS]
        # Assert: the same tokens; the same reuse as on one engine
        assert [t for t, _, _ in got] == want
        assert [c for _, c, _ in got] == CACHED
        u = coord.prefixes.usage()
        assert u.donors == 3 and u.hit_tokens == sum(CACHED)
        for host, _, _ in nodes.values():  # one donor per kept prompt at each stage
            info = host.info()
            assert info["prefixes"] == 3 and info["sessions"] == 0
            assert info["prefix_bytes"] == u.nbytes // 2  # two stages of two blocks each
        coord.close()
        assert all(h.info()["prefixes"] == 0 for h, _, _ in nodes.values())


def test_a_donor_a_node_evicted_is_prefilled_instead(lm):
    plan = Plan.split(4, [2], ["a", "b"])
    with grpc_nodes(lm.model, ["a", "b"]) as nodes:
        want = _generate(_coordinator(lm, nodes, plan, 0), lm, PROMPTS[1])[0]
        coord = _coordinator(lm, nodes, plan, 64 << 20)
        _generate(coord, lm, PROMPTS[0])
        [donor] = coord.prefixes.index.donors()
        host_b = nodes["b"][0]
        host_b.handle(Frame(Op.CLOSE, session=donor))  # as its memory cap would
        tokens, cached, _ = _generate(coord, lm, PROMPTS[1])
        assert (tokens, cached) == (want, 0)
        assert donor not in coord.prefixes.index and coord.prefixes.usage().donors == 1
        assert nodes["a"][0].info()["prefixes"] == 1  # the stale half was freed too
        coord.close()


def test_a_session_filled_from_a_donor_survives_a_failover(lm):
    plan = Plan.split(4, [2], ["a", "b"])
    with grpc_nodes(lm.model, ["a", "b", "c"]) as nodes:
        want = _generate(_coordinator(lm, nodes, plan, 0), lm, PROMPTS[1])[0]
        coord = _coordinator(lm, nodes, plan, 64 << 20)
        coord.add_device("c", nodes["c"][2])
        _generate(coord, lm, PROMPTS[0])

        def kill_b(n_tokens: int) -> None:
            if n_tokens == 4 and coord.plan.stages[1].device == "b":
                nodes["b"][1].stop(0)  # node b dies between two tokens

        tokens, cached, extra = _generate(coord, lm, PROMPTS[1], kill_b)
        # Assert: nothing lost or doubled; the replay rebuilt the prefix it never computed
        assert cached == 40 and tokens == want
        assert extra["failovers"] == 1 and extra["replayed_tokens"] >= 40
        assert "b" not in {st.device for st in coord.plan.stages}
        assert coord.prefixes.usage().donors == 0  # donors died with their plan
        coord.close()


def test_nodes_count_donors_against_the_cap_and_evict_them_first(lm):
    # Prepare: a node whose cap holds 130 tokens of cache
    n = lm.model.cfg.num_layers
    host = StageHost("mem", 1)  # the cap is set below, once the per-token cost is known
    host.add_engine(TorchStageEngine(EngineConfig("mem", Shard(0, n, n)), model=lm.model))
    key = next(iter(host.engines))
    per_token = host.limits[key].bytes_per_token
    host.memory_cap_bytes = 130 * per_token

    def ask(op, session="", arg=0, payload=b"", **kw):  # type: ignore[no-untyped-def]
        return host.handle(Frame(op, key, session, arg=arg, payload=payload, **kw))

    def prefix(name: str) -> bytes:
        return Frame.json_bytes({"prefix": name})

    ids = np.array([PROMPTS[0][:40]], dtype=np.int64)
    assert ask(Op.OPEN, "s1", 64).op == Op.OK
    assert ask(Op.FORWARD, "s1", 0, IDS.encode(ids), codec=IDS.id, reply_codec=0,
               shape=ids.shape).op == Op.OK
    saved = ask(Op.SAVE_PREFIX, "s1", 40, prefix("d1"))
    assert saved.op == Op.OK and saved.json() == {"bytes": 40 * per_token}
    # Execute: a second session needs room: the donor goes, not s1
    assert ask(Op.OPEN, "s2", 64).op == Op.OK
    info = host.info()
    assert (info["prefixes"], info["sessions"]) == (0, 2)
    assert (info["prefix_evictions"], info["evictions"]) == (1, 0)
    # Assert: a donor only takes room other donors can make; a gone donor is missing
    refused = ask(Op.SAVE_PREFIX, "s1", 40, prefix("d2"))
    assert refused.op == Op.ERROR and refused.arg == ErrorCode.MEMORY
    assert b"--memory-mb" in refused.payload
    missing = ask(Op.LOAD_PREFIX, "s2", 40, prefix("d1"))
    assert missing.op == Op.ERROR and missing.arg == ErrorCode.SESSION_MISSING
    assert ask(Op.CLOSE, "s2").op == Op.OK
    assert ask(Op.SAVE_PREFIX, "s1", 40, prefix("d3")).op == Op.OK
    # a donor is never stepped, and a bad payload is named
    step = ask(Op.FORWARD, "d3", 40, IDS.encode(ids[:, :1]), codec=IDS.id, reply_codec=0,
               shape=(1, 1))
    assert step.op == Op.ERROR and b"only copied from" in step.payload
    bad = ask(Op.LOAD_PREFIX, "s1", 4, b"[]")
    assert bad.arg == ErrorCode.BAD_FRAME and b'{"prefix"' in bad.payload
    assert ask(Op.CLOSE, "s1").op == Op.OK
    assert ask(Op.OPEN, "s3", 64).op == Op.OK  # 64 + 40 fit: the donor stays
    assert ask(Op.LOAD_PREFIX, "s3", 40, prefix("d3")).op == Op.OK
    assert host.engines[key].length("s3") == 40 and host.info()["prefix_evictions"] == 1
