"""A batch-invariant ONNX engine (``EngineConfig.batch_invariant``): a session's logits are
bit for bit the same whether it steps alone or in a batch of any size.

Why it is a mode: MatMulNBits at accuracy level 4 (int8 activations) computes one row with
another kernel than two or more, whose rows are identical whatever the batch (measured on an
AVX2 host: 1e-6 apart, and the int8 rounding of the next layer's input turns that into 0.75
logits and other greedy tokens after a few steps). The engine runs a single row as two, a
pad row beside it in the pool, so these tests ask for exact equality, and check that the pad
row never changes another session's cache.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeweave.errors import ConfigError
from edgeweave.runtime.engines.base import EngineConfig
from edgeweave.types import Shard
from tests.conftest import make_cfg, random_model

pytest.importorskip("onnxruntime")
compress = pytest.importorskip("edgeweave.compress")

PROMPTS = [[5, 9, 3], [7, 11, 40, 2, 33, 8, 1], [60, 61, 62, 63, 64], [9, 9, 12, 13]]
FORCED = [17, 4, 99, 23, 8, 61, 30, 2, 45, 12]  # the tokens every session is fed


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return compress.compress(random_model(make_cfg()), compress.RTN(bits=4, group_size=32)).model


@pytest.fixture(scope="module")
def export(model, tmp_path_factory):  # type: ignore[no-untyped-def]
    from edgeweave.runtime.engines.onnx_build import Export
    from edgeweave.runtime.engines.onnx_export import ExportSpec, build_stage, save

    n = model.cfg.num_layers
    spec = ExportSpec(0, n, weights="int4", max_len=model.cfg.max_position)
    folder = tmp_path_factory.mktemp("int4")
    save(build_stage(model, spec), folder)
    return Export(folder / "model.onnx", True, spec, {}, model.cfg)


def _engine(model, export, invariant=True):  # type: ignore[no-untyped-def]
    from edgeweave.runtime.engines.onnx import SessionProfile, open_engine

    n = model.cfg.num_layers
    cfg = EngineConfig("tiny", Shard(0, n, n), "int4", backend="onnx", threads=1,
                       batch_invariant=invariant)
    return open_engine(cfg, export, SessionProfile(threads=1))


def _ids(tokens):  # type: ignore[no-untyped-def]
    return np.array([tokens], np.int64)


def _alone(model, export, prompt, max_len=32):  # type: ignore[no-untyped-def]
    """Logits of ``prompt`` then each forced token, the session alone in a fresh engine."""
    eng = _engine(model, export)
    eng.open("s", max_len)
    out = [eng.forward("s", _ids(prompt))[0]]
    out += [eng.forward("s", _ids([t]))[0] for t in FORCED]
    return out


def test_a_session_computes_the_same_alone_and_in_any_batch(model, export):
    """Sessions of different lengths decode in batches of 4, then 3, then 2, then alone, as
    requests finish: every step's logits equal the same session's alone, exactly."""
    want = [_alone(model, export, p) for p in PROMPTS]
    eng = _engine(model, export)
    sids = [f"s{j}" for j in range(len(PROMPTS))]
    for sid, p in zip(sids, PROMPTS, strict=True):
        eng.open(sid, 32)
        np.testing.assert_array_equal(eng.forward(sid, _ids(p))[0], want[sids.index(sid)][0])
    for k, tok in enumerate(FORCED):
        live = sids[:max(1, len(sids) - k // 3)]  # 4, 4, 4, 3, 3, 3, 2, 2, 2, 1 sessions
        outs = eng.forward_batch(live, [_ids([tok])] * len(live))
        for sid, out in zip(live, outs, strict=True):
            np.testing.assert_array_equal(out[0], want[sids.index(sid)][k + 1], err_msg=sid)


def test_the_pad_row_leaves_every_other_cache_as_it_was(model, export):
    """Sessions step alone while others wait in the same pool: the pad row lands in a
    waiting neighbour's slot (right, or left when the right one is full), or, between two
    full caches, the session moves beside the spare slot. Every session then goes on exactly
    as if alone, and the full caches hold what they held."""
    want = [_alone(model, export, p) for p in PROMPTS]
    eng = _engine(model, export)
    for sid in ("a", "c", "full", "x", "full2"):  # slots 0..4, in this order
        eng.open(sid, 32)
    pool = eng._sessions["a"].pool
    for sid, p in (("a", PROMPTS[0]), ("c", PROMPTS[2]), ("x", PROMPTS[3])):
        eng.forward(sid, _ids(p))
    for sid in ("full", "full2"):  # every position written
        eng.forward(sid, _ids(list(range(3, 3 + pool.length))))
        assert eng._sessions[sid].length == pool.length
    before = {sid: [k.copy() for k in eng._kv(sid)[0] + eng._kv(sid)[1]]
              for sid in ("full", "full2")}
    for k, tok in enumerate(FORCED[:5]):  # its pad row writes into c's slot
        np.testing.assert_array_equal(eng.forward("a", _ids([tok]))[0], want[0][k + 1])
    for k, tok in enumerate(FORCED):  # right neighbour full: into a's slot
        np.testing.assert_array_equal(eng.forward("c", _ids([tok]))[0], want[2][k + 1])
    for k, tok in enumerate(FORCED[5:], start=5):
        np.testing.assert_array_equal(eng.forward("a", _ids([tok]))[0], want[0][k + 1])
    assert eng._sessions["x"].slot == 3
    for k, tok in enumerate(FORCED):  # between two full caches: x moves to the last slot
        np.testing.assert_array_equal(eng.forward("x", _ids([tok]))[0], want[3][k + 1])
    assert eng._sessions["x"].slot == len(pool.owners) - 1
    for sid, arrays in before.items():
        for old, new in zip(arrays, eng._kv(sid)[0] + eng._kv(sid)[1], strict=True):
            np.testing.assert_array_equal(new, old, err_msg=sid)
    eng.open("b", 32)  # a session that joins late, beside the others
    np.testing.assert_array_equal(eng.forward("b", _ids(PROMPTS[1]))[0], want[1][0])


def test_the_pool_keeps_a_spare_slot_for_the_pad_row(model, export):
    eng = _engine(model, export)
    for j in range(5):
        eng.open(f"s{j}", 32)
        pool = eng._sessions["s0"].pool
        assert pool.keys[0].shape[0] > len(pool.owners)
    for j in range(5):
        eng.close(f"s{j}")
    plain = _engine(model, export, invariant=False)
    plain.open("s", 32)
    assert plain._sessions["s"].pool.keys[0].shape[0] == 1  # the default mode adds nothing


def test_batch_invariance_is_an_onnx_mode():
    with pytest.raises(ConfigError, match="onnx backend"):
        EngineConfig("tiny", Shard(0, 4, 4), "fp32", backend="torch", batch_invariant=True)


@pytest.mark.parametrize("invariant", [True, False])
def test_a_split_plan_asks_its_nodes_for_batch_invariant_stages(tiny_folder, tmp_home,
                                                                invariant):
    """A coordinator with ``batch_invariant`` LOADs every stage of a split int4 plan in that
    mode (its key says so); its sessions stepping together in FORWARD_BATCH frames then
    compute each step's logits exactly as each session alone."""
    from edgeweave.runtime.generate import SamplingParams
    from edgeweave.runtime.launch import embedded
    from edgeweave.runtime.sequence import Generation, step_batch
    from edgeweave.types import Plan

    prompts = [[1, 5, 9, 17, 33, 3, 40, 41], [1, 7, 8], [1, *range(20, 44)], [1, 60, 61, 62]]
    params = SamplingParams(max_tokens=10, ignore_eos=True, temperature=1.0, seed=0)
    dep = embedded(str(tiny_folder), Plan.split(4, [2], ["a", "b"], variant="int4"),
                   backend="onnx", max_len=128, batch_invariant=invariant)

    def drive(which: list[int]) -> dict[int, list[np.ndarray]]:
        sessions = [dep.coordinator.new_session(64) for _ in which]
        gens = [Generation(s, dep.tokenizer, prompts[i], params)
                for s, i in zip(sessions, which, strict=True)]
        seen: dict[int, list[np.ndarray]] = {i: [] for i in which}
        while not all(g.finished for g in gens):
            live = [(i, s, g) for i, s, g in zip(which, sessions, gens, strict=True)
                    if not g.finished]
            out = step_batch([(s, g.next_input(8)) for _, s, g in live])
            for (i, _, g), r in zip(live, out, strict=True):
                assert not isinstance(r, BaseException), r
                seen[i].append(np.asarray(r).copy())
                g.feed(r)
        for s in sessions:
            s.close()
        return seen

    try:
        alone = {i: drive([i])[i] for i in range(len(prompts))}
        together = drive(list(range(len(prompts))))
        keys = [k for host in dep.hosts.values() for k in host.engines]
    finally:
        dep.close()
    assert len(keys) == 2 and all(k.endswith("+bi") == invariant for k in keys), keys
    if invariant:
        for i, steps in alone.items():
            assert len(steps) == len(together[i])
            for a, b in zip(steps, together[i], strict=True):
                np.testing.assert_array_equal(b, a)
