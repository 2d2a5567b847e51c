"""Batched steps (``StageEngine.forward_batch``) against single-session steps, both engines.

Sessions of different lengths decode together; a prefill chunk rides in the same batch. The
tolerance: fp32 on the torch reference packs tokens into one matrix product, whose rounding
may differ from the single-row product by a few ulps (max |d logit| < 1e-4 on this model);
ONNX Runtime's batched MatMul/GQA kernels likewise. Greedy tokens must be identical.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeweave.errors import RuntimeStageError
from edgeweave.runtime.engines.base import EngineConfig, forward_each
from edgeweave.runtime.engines.torch import TorchStageEngine
from edgeweave.types import Shard
from tests.conftest import make_cfg, random_model

TOL = 1e-4
PROMPTS = [[5, 9, 3], [7, 11, 40, 2, 33, 8, 1], [4], [60, 61, 62, 63, 64], [9, 9, 12, 13]]


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return random_model(make_cfg())


def _torch(model, start, end):  # type: ignore[no-untyped-def]
    n = model.cfg.num_layers
    return TorchStageEngine(EngineConfig("tiny", Shard(start, end, n)), model=model)


def _onnx(model, tmp_path, start, end):  # type: ignore[no-untyped-def]
    pytest.importorskip("onnxruntime")
    from edgeweave.runtime.engines.onnx import SessionProfile, engine_from_model
    from edgeweave.runtime.engines.onnx_export import ExportSpec

    n = model.cfg.num_layers
    cfg = EngineConfig("tiny", Shard(start, end, n), "fp32", backend="onnx", threads=1)
    spec = ExportSpec(start, end, weights="fp32", max_len=model.cfg.max_position)
    return engine_from_model(model, cfg, tmp_path / f"b-{start}-{end}", spec,
                             SessionProfile(threads=1))


def _stages(kind, model, tmp_path, cut):  # type: ignore[no-untyped-def]
    n = model.cfg.num_layers
    bounds = [0, n] if cut is None else [0, cut, n]
    make = (lambda a, b: _torch(model, a, b)) if kind == "torch" else \
        (lambda a, b: _onnx(model, tmp_path, a, b))
    return [make(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]


def _step(stages, sids, xs, batched):  # type: ignore[no-untyped-def]
    for st in stages:
        xs = st.forward_batch(sids, xs) if batched else forward_each(st, sids, xs)
    return [x[0] for x in xs]  # (vocab,) each


def _greedy(stages, batched, n_new=8, max_len=32):  # type: ignore[no-untyped-def]
    """Greedy decode of every prompt; the batched run prefills them as one mixed batch of
    chunks (different lengths), then decodes all sessions together, one step per token, while
    the last session joins late (its prompt is a chunk inside a decode batch)."""
    sids = [f"s{j}" for j in range(len(PROMPTS))]
    for st in stages:
        for s in sids:
            st.open(s, max_len)
    late = sids[-1]
    logits = dict(zip(sids[:-1], _step(stages, sids[:-1],
                                       [np.array([p]) for p in PROMPTS[:-1]], batched),
                      strict=True))
    seqs = {s: [] for s in sids}
    trace: dict[str, list[np.ndarray]] = {s: [] for s in sids}
    for t in range(n_new + 4):
        run = [s for s in sids if s in logits]
        for s in run:
            if len(seqs[s]) < n_new:
                seqs[s].append(int(np.argmax(logits[s])))
                trace[s].append(logits[s])
        step = [s for s in run if len(seqs[s]) < n_new]
        xs = [np.array([[seqs[s][-1]]]) for s in step]
        if t == 2:  # the late prompt joins the batch as a prefill chunk
            step.append(late)
            xs.append(np.array([PROMPTS[-1]]))
        if not step:
            break
        logits.update(zip(step, _step(stages, step, xs, batched), strict=True))
    for st in stages:
        for s in sids:
            st.close(s)
    return seqs, trace


@pytest.mark.parametrize("kind", ["torch", "onnx"])
@pytest.mark.parametrize("cut", [None, 2], ids=["whole", "split"])
def test_batched_steps_equal_single_session_steps(kind, cut, model, tmp_path):
    stages = _stages(kind, model, tmp_path, cut)
    ref_tokens, ref = _greedy(stages, batched=False)
    got_tokens, got = _greedy(stages, batched=True)
    assert got_tokens == ref_tokens
    assert all(len(v) == 8 for v in got_tokens.values())
    diff = max(float(np.abs(a - b).max()) for s in ref for a, b in zip(ref[s], got[s],
                                                                       strict=True))
    assert diff < TOL, diff
    # the two engines agree with each other too (the reference is the torch engine)
    if kind == "onnx":
        torch_tokens, _ = _greedy(_stages("torch", model, tmp_path, cut), batched=True)
        assert torch_tokens == got_tokens


def test_onnx_batch_survives_closing_sessions_in_the_middle(model, tmp_path):
    """Closing a session moves another into its slot; the moved cache must keep decoding as
    if nothing happened, in a batch whose slots are no longer consecutive."""
    eng = _onnx(model, tmp_path, 0, model.cfg.num_layers)
    ref = _torch(model, 0, model.cfg.num_layers)
    sids = [f"c{j}" for j in range(4)]
    for e in (eng, ref):
        for s in sids:
            e.open(s, 32)
        forward_each(e, sids, [np.array([p]) for p in PROMPTS[:4]])
    eng.close("c1")
    ref.close("c1")
    eng.open("c9", 16)  # a smaller pool: not batched with the others, still correct
    ref.open("c9", 16)
    live = ["c3", "c0", "c2", "c9"]
    xs = [np.array([[7]]), np.array([[8]]), np.array([[9]]), np.array([[3, 4]])]
    got = eng.forward_batch(live, xs)
    want = ref.forward_batch(live, xs)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and float(np.abs(a - b).max()) < TOL
    assert [eng.length(s) for s in live] == [ref.length(s) for s in live]


@pytest.mark.parametrize("kind", ["torch", "onnx"])
def test_a_bad_batch_is_refused_before_any_cache_changes(kind, model, tmp_path):
    eng = _stages(kind, model, tmp_path, None)[0]
    eng.open("a", 4)
    eng.open("b", 8)
    eng.forward("a", np.array([[1, 2, 3]]))
    with pytest.raises(RuntimeStageError, match="at most once"):
        eng.forward_batch(["a", "a"], [np.array([[1]]), np.array([[2]])])
    with pytest.raises(Exception, match="KV cache holds 4 tokens"):
        eng.forward_batch(["b", "a"], [np.array([[1]]), np.array([[5, 6]])])
    assert eng.length("a") == 3 and eng.length("b") == 0


def test_onnx_pools_follow_the_sessions(model, tmp_path):
    """Sessions share a pool by capacity (next power of two, or a busier pool within 2x);
    bytes are reported per session from its capacity; closing every session frees the pools."""
    from edgeweave.runtime.engines.onnx import capacity

    assert [capacity(n) for n in (1, 2, 3, 64, 65, 100)] == [1, 2, 4, 64, 128, 128]
    eng = _onnx(model, tmp_path, 0, model.cfg.num_layers)
    per_pos = 2 * model.cfg.num_layers * model.cfg.num_kv_heads * model.cfg.head_dim * 4
    for j in range(5):
        eng.open(f"p{j}", 20)
    eng.open("big", 100)
    eng.open("joins", 60)  # its own capacity is 64: the 128-pool holds it within 2x
    eng.open("alone", 200)  # 256: no pool within 2x
    assert eng.session_bytes("p0") == 32 * per_pos
    assert eng.session_bytes("joins") == 128 * per_pos
    assert sorted(eng._pools) == [32, 128, 256]
    for s in eng.sessions():
        eng.close(s)
    assert eng._pools == {} and eng._bindings == {}
