"""The stage engine interface: split stages reproduce the whole model exactly."""

from __future__ import annotations

import numpy as np
import pytest

from edgeweave.errors import ConfigError
from edgeweave.runtime.engine import LocalEngine
from edgeweave.runtime.engines.base import EngineConfig, SessionNotFound, StageEngine, create_engine
from edgeweave.runtime.engines.torch import TorchStageEngine
from edgeweave.types import Shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _stages(model, cuts):
    n = model.cfg.num_layers
    bounds = [0, *cuts, n]
    return [TorchStageEngine(EngineConfig("mem", Shard(a, b, n)), model=model)
            for a, b in zip(bounds, bounds[1:], strict=False)]


def _run(stages, sid, x):
    for st in stages:
        x = st.forward(sid, x)
    return x


def test_split_stages_match_local_engine(tiny_model):
    # Prepare
    ids = [5, 9, 17, 33, 3]
    local = LocalEngine(tiny_model, max_len=64)
    stages = _stages(tiny_model, [1, 3])
    for st in stages:
        st.open("s", 64)
        assert isinstance(st, StageEngine)
    # Execute / Assert: prefill then three decode steps, logits bit-identical
    ref = local.prefill(ids)
    got = _run(stages, "s", np.array([ids]))
    assert got.shape == (1, tiny_model.cfg.vocab_size)
    np.testing.assert_array_equal(ref, got[0])
    for tok in (7, 8, 9):
        np.testing.assert_array_equal(local.decode(tok), _run(stages, "s", np.array([[tok]]))[0])
    assert [st.length("s") for st in stages] == [8, 8, 8]


def test_truncate_replays_identically(tiny_model):
    stages = _stages(tiny_model, [2])
    for st in stages:
        st.open("a", 32)
    _run(stages, "a", np.array([[4, 5, 6]]))
    first = _run(stages, "a", np.array([[7]]))
    for st in stages:
        st.truncate("a", 3)
    again = _run(stages, "a", np.array([[7]]))
    np.testing.assert_array_equal(first, again)
    assert stages[0].session_bytes("a") > 0
    stages[0].close("a")
    with pytest.raises(SessionNotFound):
        stages[0].forward("a", np.array([[1]]))


def test_registry_rejects_unknown_backend():
    cfg = EngineConfig("x", Shard(0, 1, 1), backend="nope")
    with pytest.raises(ConfigError, match="unknown stage backend"):
        create_engine(cfg)
    with pytest.raises(ConfigError):
        EngineConfig("x", Shard(0, 1, 1), variant="Int 3")
