"""``forward_all``: the logits of every position of one multi-token step (the verifier of
speculative decoding), on both engines, fp32 and int4, whole and split.

Tolerances: row ``t`` of one ``(1, T)`` step against a separate prefill of the first ``t + 1``
tokens compares two matrix products of different row counts, whose summation order (and,
for int4 ONNX graphs at accuracy level 4, the GEMV against the GEMM kernel of MatMulNBits)
may differ by float rounding. Measured on this tiny model (logits of order 2): max |d logit|
9.5e-7 on torch fp32, exactly 0 on torch int4 and on both ONNX graphs. ``TOL`` leaves room
for other BLAS builds and kernels. A cut plan runs the same kernels as the whole graph:
``SPLIT_TOL``.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeweave.errors import RuntimeStageError
from edgeweave.runtime.engines.base import EngineConfig, supports_forward_all
from edgeweave.runtime.engines.torch import TorchStageEngine
from edgeweave.types import Shard
from tests.adapter_helpers import world_fixture
from tests.conftest import make_cfg, random_model

pytest.importorskip("onnxruntime")
compress = pytest.importorskip("edgeweave.compress")

TOL = 1e-4
SPLIT_TOL = 1e-5
PREFIX = [5, 9, 3]
DRAFT = [7, 11, 40, 2, 33]  # T = 5 tokens scored in one step
CASES = [(kind, weights) for kind in ("torch", "onnx") for weights in ("fp32", "int4")]


@pytest.fixture(scope="module")
def models():  # type: ignore[no-untyped-def]
    """The tiny model in fp32 and as an int4 RTN artifact (what both engines run)."""
    fp32 = random_model(make_cfg())
    int4 = compress.compress(fp32, compress.RTN(bits=4, group_size=32)).model
    return {"fp32": fp32, "int4": int4}


@pytest.fixture(params=CASES, ids=[f"{k}-{w}" for k, w in CASES])
def make(request, models, tmp_path):  # type: ignore[no-untyped-def]
    """``make(start, end)``: a stage engine of the case's backend and weights."""
    kind, weights = request.param
    model = models[weights]
    n = model.cfg.num_layers

    def build(start: int, end: int):  # type: ignore[no-untyped-def]
        cfg = EngineConfig("tiny", Shard(start, end, n), weights, backend=kind, threads=1)
        if kind == "torch":
            return TorchStageEngine(cfg, model=model)
        from edgeweave.runtime.engines.onnx import SessionProfile, engine_from_model
        from edgeweave.runtime.engines.onnx_export import ExportSpec

        spec = ExportSpec(start, end, weights=weights, max_len=model.cfg.max_position)
        return engine_from_model(model, cfg, tmp_path / f"{weights}-{start}-{end}", spec,
                                 SessionProfile(threads=1))

    build.n = n  # type: ignore[attr-defined]
    return build


def _ids(tokens: list[int]) -> np.ndarray:
    return np.array([tokens], np.int64)


def _prefill(engine, sid: str, tokens: list[int]) -> np.ndarray:  # type: ignore[no-untyped-def]
    """What ``forward`` returns after ``tokens`` fed as one chunk to a fresh session."""
    engine.open(sid, 64)
    return engine.forward(sid, _ids(tokens))


def test_every_row_is_the_logits_after_its_prefix(make):
    engine = make(0, make.n)
    assert supports_forward_all(engine)
    tokens = PREFIX + DRAFT
    engine.open("all", 64)
    rows = engine.forward_all("all", _ids(tokens))
    assert rows.shape == (1, len(tokens), engine.vocab_size) and rows.dtype == np.float32
    for t in range(len(tokens)):  # (b) row t: the logits after tokens [0..t], one chunk
        want = _prefill(engine, f"ref{t}", tokens[:t + 1])
        np.testing.assert_allclose(rows[:, t], want, rtol=0, atol=TOL)
    # (a) the last row is what forward returns on an identical session
    np.testing.assert_allclose(rows[:, -1], _prefill(engine, "same", tokens), rtol=0, atol=TOL)


def test_the_cache_grows_by_t_and_decoding_goes_on(make):
    engine = make(0, make.n)
    _prefill(engine, "s", PREFIX)
    rows = engine.forward_all("s", _ids(DRAFT))
    assert engine.length("s") == len(PREFIX) + len(DRAFT)  # (c)
    nxt = int(rows[0, -1].argmax())
    got = engine.forward("s", _ids([nxt]))
    _prefill(engine, "ref", PREFIX + DRAFT)
    np.testing.assert_allclose(got, engine.forward("ref", _ids([nxt])), rtol=0, atol=TOL)
    assert engine.length("s") == engine.length("ref") == len(PREFIX) + len(DRAFT) + 1


def test_a_rollback_then_the_rest_reproduces_the_rows(make):
    """(d) how speculative decoding rolls back: keep the first ``accepted`` drafted tokens
    (``truncate``), score the rest again."""
    engine = make(0, make.n)
    _prefill(engine, "s", PREFIX)
    rows = engine.forward_all("s", _ids(DRAFT))
    accepted = 2
    engine.truncate("s", len(PREFIX) + accepted)
    again = engine.forward_all("s", _ids(DRAFT[accepted:]))
    np.testing.assert_allclose(again, rows[:, accepted:], rtol=0, atol=TOL)
    engine.truncate("s", len(PREFIX))  # every draft rejected: a one-token step from there
    one = engine.forward_all("s", _ids(DRAFT[:1]))
    assert one.shape == (1, 1, engine.vocab_size)
    np.testing.assert_allclose(one, rows[:, :1], rtol=0, atol=TOL)


def test_a_stage_before_the_last_returns_what_forward_does(make):
    """(e) hidden states, not logits: the head is not on this stage."""
    engine = make(0, 2)
    hidden = _prefill(engine, "fwd", PREFIX + DRAFT)
    engine.open("all", 64)
    got = engine.forward_all("all", _ids(PREFIX + DRAFT))
    assert got.shape == (1, len(PREFIX + DRAFT), engine.hidden_size)
    np.testing.assert_array_equal(got, hidden)


@pytest.mark.parametrize("cut", [1, 3])
def test_a_split_plan_scores_what_the_whole_model_does(make, cut):
    """(f) stage [0, cut) forward, stage [cut, n) forward_all == the whole model's."""
    whole, first, last = make(0, make.n), make(0, cut), make(cut, make.n)
    _prefill(whole, "s", PREFIX)
    want = whole.forward_all("s", _ids(DRAFT))
    for st in (first, last):
        st.open("s", 64)
    last.forward("s", first.forward("s", _ids(PREFIX)))  # the prefix through both stages
    got = last.forward_all("s", first.forward("s", _ids(DRAFT)))
    assert got.shape == want.shape == (1, len(DRAFT), whole.vocab_size)
    np.testing.assert_allclose(got, want, rtol=0, atol=SPLIT_TOL)
    assert first.length("s") == last.length("s") == len(PREFIX) + len(DRAFT)


def test_a_decode_step_after_forward_all_is_a_plain_one_again(make):
    """The ONNX engine shares one IO binding between both: forward_all binds the head's
    start back, so a later forward (single or batched) returns one row again."""
    engine = make(0, make.n)
    for sid in ("a", "b"):
        _prefill(engine, sid, PREFIX)
    engine.forward_all("a", _ids(DRAFT))
    engine.forward("b", _ids(DRAFT))
    out = engine.forward_batch(["a", "b"], [_ids([4]), _ids([4])])
    assert [o.shape for o in out] == [(1, engine.vocab_size)] * 2
    np.testing.assert_allclose(out[0], out[1], rtol=0, atol=TOL)


def test_an_old_graph_of_the_last_position_only_is_refused(models, tmp_path):
    """A graph whose head slice is not overridable (exported before forward_all) says how
    to get one that is, and the session does not advance."""
    pytest.importorskip("onnx")
    from edgeweave.runtime.engines.onnx import OnnxStageEngine, SessionProfile
    from edgeweave.runtime.engines.onnx_export import ExportSpec, build_stage, save
    from edgeweave.runtime.engines.onnx_spec import LAST_STARTS

    model = models["fp32"]
    cfg, n = model.cfg, model.cfg.num_layers
    proto = build_stage(model, ExportSpec(0, n, max_len=cfg.max_position))
    inputs = [vi for vi in proto.graph.input if vi.name != LAST_STARTS]
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)
    (tmp_path / "old").mkdir()
    save(proto, tmp_path / "old")
    engine = OnnxStageEngine(EngineConfig("tiny", Shard(0, n, n), backend="onnx", threads=1),
                             tmp_path / "old" / "model.onnx", cfg.hidden_size, cfg.vocab_size,
                             (cfg.num_kv_heads, cfg.head_dim), SessionProfile(threads=1))
    _prefill(engine, "s", PREFIX)
    with pytest.raises(RuntimeStageError, match="last position only.*rebuilt"):
        engine.forward_all("s", _ids(DRAFT))
    assert engine.length("s") == len(PREFIX)


def test_a_stage_cut_from_a_wider_export_keeps_the_overridable_head(models, tmp_path):
    """``onnx_slice`` keeps ``last.starts`` as an input of a cut last stage (its Slice goes
    with the head) and drops it from a cut stage before the last (no input left to feed)."""
    onnx = pytest.importorskip("onnx")
    from edgeweave.runtime.engines.onnx import SessionProfile, open_engine
    from edgeweave.runtime.engines.onnx_build import Export
    from edgeweave.runtime.engines.onnx_export import ExportSpec, build_stage, save
    from edgeweave.runtime.engines.onnx_slice import slice_export
    from edgeweave.runtime.engines.onnx_spec import LAST_STARTS

    model = models["int4"]
    n, cut = model.cfg.num_layers, 2
    (tmp_path / "whole").mkdir()
    spec = ExportSpec(0, n, weights="int4", max_len=model.cfg.max_position)
    save(build_stage(model, spec), tmp_path / "whole")
    stages = []
    for a, b in ((0, cut), (cut, n)):
        folder = tmp_path / f"cut-{a}-{b}"
        folder.mkdir()
        save(slice_export(tmp_path / "whole", a, b, n), folder)
        names = {vi.name for vi in onnx.load(str(folder / "model.onnx"),
                                             load_external_data=False).graph.input}
        assert (LAST_STARTS in names) == (b == n)
        cfg = EngineConfig("tiny", Shard(a, b, n), "int4", backend="onnx", threads=1)
        stages.append(open_engine(cfg, Export(folder / "model.onnx", True, spec, {}, model.cfg),
                                  SessionProfile(threads=1)))
    whole = open_engine(EngineConfig("tiny", Shard(0, n, n), "int4", backend="onnx", threads=1),
                        Export(tmp_path / "whole" / "model.onnx", True, spec, {}, model.cfg),
                        SessionProfile(threads=1))
    whole.open("s", 64)
    want = whole.forward_all("s", _ids(PREFIX + DRAFT))
    for st in stages:
        st.open("s", 64)
    got = stages[1].forward_all("s", stages[0].forward("s", _ids(PREFIX + DRAFT)))
    np.testing.assert_allclose(got, want, rtol=0, atol=SPLIT_TOL)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    yield from world_fixture(tmp_path_factory)


@pytest.mark.parametrize("kind", ["torch", "onnx"])
def test_a_session_with_an_adapter_scores_every_position_with_it(world, tmp_path, kind):
    """A LoRA session runs its adapter on every row (the ONNX LoRA twin has the same
    overridable head), and a base session beside it stays the base model."""
    from edgeweave.runtime.adapters import load_adapter
    from edgeweave.runtime.engine import LocalEngine

    cfg = world["cfg"]
    n = cfg.num_layers
    model = random_model(cfg, 0)  # the base the adapters were trained on
    config = EngineConfig("tiny", Shard(0, n, n), backend=kind, threads=1)
    if kind == "torch":
        engine = TorchStageEngine(config, model=model)
    else:
        from edgeweave.runtime.engines.onnx import SessionProfile, engine_from_model
        from edgeweave.runtime.engines.onnx_export import ExportSpec

        engine = engine_from_model(model, config, tmp_path / "lora",
                                   ExportSpec(0, n, max_len=cfg.max_position),
                                   SessionProfile(threads=1))
    engine.add_adapter(load_adapter(world["specs"][0]))  # home-a
    tokens = PREFIX + DRAFT
    for sid, adapter in (("lora", "home-a"), ("base", None)):
        engine.open(sid, 64, adapter=adapter)
    rows = {sid: engine.forward_all(sid, _ids(tokens)) for sid in ("lora", "base")}
    for name, sid in (("home-a", "lora"), ("tiny-llama", "base")):
        merged = LocalEngine(world["merged"][name], 64)
        for t in (0, 3, len(tokens) - 1):
            np.testing.assert_allclose(rows[sid][:, t], merged.prefill(tokens[:t + 1])[None],
                                       rtol=0, atol=TOL)
    assert np.abs(rows["lora"] - rows["base"]).max() > 10 * TOL  # the adapter did something
