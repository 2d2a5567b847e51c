"""Batched steps through a coordinator: one FORWARD_BATCH frame per stage for every session.

Sessions of a split plan (in-process nodes, fp32 torch reference) step together, with prompts
fed in chunks inside decode batches; greedy tokens must equal each prompt run alone on the
whole model, through a failover in the middle of the batch and through evictions.
"""

from __future__ import annotations

import pytest

from edgeweave.models import load
from edgeweave.runtime.deployment import Deployment
from edgeweave.runtime.engine import LocalEngine
from edgeweave.runtime.generate import SamplingParams, generate_step
from edgeweave.runtime.launch import embedded
from edgeweave.runtime.sequence import Generation, step_batch
from edgeweave.runtime.transport.frame import (
    Frame,
    FrameError,
    Op,
    pack_batch,
    unpack_batch,
)
from edgeweave.types import Plan

PROMPTS = [[1, 5, 9, 17, 33, 3, 40, 41], [1, 7], [1, *range(20, 44)], [1, 60, 61, 62]]
PARAMS = SamplingParams(max_tokens=12, ignore_eos=True)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def lm(tiny_folder):
    return load(str(tiny_folder))


def _alone(lm) -> list[list[int]]:
    return [list(generate_step(LocalEngine(lm.model, max_len=128), p, PARAMS)) for p in PROMPTS]


def _ops(dep: Deployment) -> list[Op]:
    """Record the op of every request the in-process nodes handle."""
    seen: list[Op] = []
    for host in dep.hosts.values():
        handle = host.handle

        def spy(req, handle=handle):  # type: ignore[no-untyped-def]
            seen.append(req.op)
            return handle(req)
        host.handle = spy
    return seen


def _drive(coord, lm, chunk: int = 8, on_step=None) -> list[list[int]]:
    sessions = [coord.new_session(64) for _ in PROMPTS]
    gens = [Generation(s, lm.tokenizer, p, PARAMS) for s, p in zip(sessions, PROMPTS,
                                                                   strict=True)]
    step = 0
    while not all(g.finished for g in gens):
        live = [(s, g) for s, g in zip(sessions, gens, strict=True) if not g.finished]
        results = step_batch([(s, g.next_input(chunk)) for s, g in live])
        for (_, g), r in zip(live, results, strict=True):
            assert not isinstance(r, BaseException), r
            g.feed(r)
        step += 1
        if on_step is not None:
            on_step(step)
    for s in sessions:
        s.close()
    return [g.tokens for g in gens]


def test_sessions_of_a_split_plan_step_in_one_frame_per_stage(lm):
    dep = embedded(str(lm.folder), Plan.split(4, [1, 3], ["a", "b", "c"]), loaded=lm,
                   max_len=128, backend="torch")
    ops = _ops(dep)
    assert _drive(dep.coordinator, lm) == _alone(lm)
    assert ops.count(Op.FORWARD_BATCH) >= 3 * 12  # every stage, every decode round
    assert ops.count(Op.FORWARD_BATCH) > ops.count(Op.FORWARD)
    dep.close()


def test_failover_in_the_middle_of_a_batch_loses_no_token(lm):
    coord = embedded(str(lm.folder), Plan.split(4, [1, 3], ["a", "b", "c"]), loaded=lm,
                     max_len=128, backend="torch").coordinator

    def fail(step: int) -> None:
        if step == 6:
            coord.mark_failed("b")
    assert _drive(coord, lm, on_step=fail) == _alone(lm)
    assert [st.device for st in coord.plan.stages] == ["a", "a", "c"]
    assert coord.stats["failovers"] == 1
    coord.close()


def test_evicted_sessions_in_a_batch_are_replayed(lm):
    per_session = 2 * 2 * 2 * 64 * 16 * 4  # stage [0, 2) at 64 tokens: room for two
    dep = embedded(str(lm.folder), Plan.split(4, [2], ["a", "b"]), loaded=lm, max_len=128,
                   memory_cap_bytes=2 * per_session, backend="torch")
    assert _drive(dep.coordinator, lm) == _alone(lm)
    assert dep.hosts["a"].evictions > 0
    dep.close()


def test_batch_payloads_round_trip_and_refuse_garbage():
    frames = [Frame(Op.FORWARD, "", f"s{j}", arg=j, codec=255, shape=(1, 1),
                    payload=bytes(8)) for j in range(3)]
    back = unpack_batch(pack_batch(frames))
    assert [(f.session, f.arg, f.shape, f.payload) for f in back] == \
        [(f.session, f.arg, f.shape, f.payload) for f in frames]
    raw = pack_batch(frames)
    for bad in (b"", raw[:-1], raw + b"x", b"\xff\xff\xff\xff", raw[:6]):
        with pytest.raises(FrameError):
            unpack_batch(bad)


def test_grpc_nodes_step_batches_and_refuse_items_alone(tiny_model):
    """Two real gRPC nodes: batched generation equals the whole model alone, and a batch with
    one out-of-sync item answers that item with ERROR while the other one runs."""
    import numpy as np

    from edgeweave.runtime import codec as codecs
    from edgeweave.runtime.launch import attach
    from edgeweave.runtime.transport.frame import ErrorCode
    from tests.runtime.node_helpers import RawStream, running_node

    with running_node(tiny_model, ((0, 2),)) as (h0, a0), \
            running_node(tiny_model, ((2, 4),)) as (_h1, a1):
        coord = attach(Plan.split(4, [2], ["n0", "n1"]), "mem", {"n0": a0, "n1": a1},
                       tokenizer=None, max_len=128).coordinator

        class Tok:  # Generation needs only the eos id and decode for text
            eos_token_id = None

            def decode(self, ids):  # type: ignore[no-untyped-def]
                return " ".join(map(str, ids))

        class LM:
            tokenizer = Tok()

        want = [list(generate_step(LocalEngine(tiny_model, max_len=128), p, PARAMS))
                for p in PROMPTS]
        assert _drive(coord, LM()) == want
        coord.close()

        raw = RawStream(a0)
        try:
            key = "0-2:fp32"
            for sid in ("x", "y"):
                assert raw.ask(Frame(Op.OPEN, key, sid, arg=16)).op == Op.OK
            ids = codecs.IDS.encode(np.array([[1, 5]], dtype=np.int64))
            items = [Frame(Op.FORWARD, "", "x", arg=0, codec=codecs.IDS.id, shape=(1, 2),
                           payload=ids),
                     Frame(Op.FORWARD, "", "y", arg=3, codec=codecs.IDS.id, shape=(1, 2),
                           payload=ids)]
            resp = raw.ask(Frame(Op.FORWARD_BATCH, key, payload=pack_batch(items)))
            ok, bad = unpack_batch(resp.payload)
            assert ok.op == Op.OK and ok.shape == (1, 2, tiny_model.cfg.hidden_size)
            assert bad.op == Op.ERROR and bad.arg == ErrorCode.OUT_OF_SYNC
            assert h0.engines[key].length("x") == 2 and h0.engines[key].length("y") == 0
        finally:
            raw.close()
