"""Nodes sharing a host: all cores for one stream, one BLAS thread for several."""

from __future__ import annotations

import numpy as np
import pytest

from edgeweave.runtime.fast import ColocatedThreads, blas_threads, set_blas_threads
from edgeweave.runtime.stage import StageHost
from edgeweave.runtime.transport.frame import Frame, Op


@pytest.fixture
def restore_blas():
    before = blas_threads()
    if before == 0:
        pytest.fail("threadpoolctl cannot see numpy's BLAS: the GEMV route is not controllable")
    yield
    set_blas_threads(before)


def test_one_session_gets_all_threads_several_get_one(restore_blas) -> None:
    policy = ColocatedThreads(wide=2, window=3)
    assert policy.observe("a") == 2 and blas_threads() == 2
    assert policy.observe("b") == 1 and blas_threads() == 1  # a second stream appeared
    policy.observe("b")
    assert policy.observe("b") == 2  # "a" has left the window: a single stream again
    assert blas_threads() == 2
    np.ones((64, 64)) @ np.ones(64)  # BLAS still works after the switches


def test_stage_host_switches_threads_between_one_and_several_sessions(restore_blas,
                                                                     tiny_model) -> None:
    # Prepare: a node hosting the whole tiny model under the colocated policy
    import torch

    from edgeweave.runtime import codec
    from edgeweave.runtime.engines.base import EngineConfig
    from edgeweave.runtime.engines.torch import TorchStageEngine
    from edgeweave.types import Shard

    n = tiny_model.cfg.num_layers
    host = StageHost("mem", colocated=ColocatedThreads(wide=2, window=2),
                     engine_factory=lambda cfg: TorchStageEngine(cfg, model=tiny_model))
    stage = host.load(EngineConfig("mem", Shard(0, n, n))).config.key
    fp32 = codec.get("fp32")
    seen = []

    def forward(session: str, pos: int) -> None:
        x = torch.tensor([[[5.0]]])
        reply = host.handle(Frame(Op.FORWARD, stage, session, arg=pos, codec=fp32.id,
                                  reply_codec=fp32.id, shape=(1, 1), payload=fp32.encode(x)))
        assert reply.op == Op.OK, reply.payload
        seen.append(blas_threads())

    for s in ("a", "b"):
        assert host.handle(Frame(Op.OPEN, stage, s, arg=16)).op == Op.OK
    # Execute: one stream, then two interleaved, then one again
    forward("a", 0)
    forward("a", 1)
    forward("b", 0)
    forward("a", 2)
    forward("a", 3)
    # Assert
    assert seen == [2, 2, 1, 1, 2]
    assert host.info()["blas_threads"] == 2
