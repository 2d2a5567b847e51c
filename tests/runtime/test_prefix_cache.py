"""The prefix cache on one in-process engine (torch reference and ONNX Runtime).

Prompts share a 40-token prefix (not a multiple of the 16-token block: the reuse follows the
tokens, not the blocks). With and without the cache the greedy tokens must be identical;
the logits after a reused prefix stay within the batched-kernel tolerance of a full prefill
(TOL below: the copied keys and values are the ones a full prefill computes, only the
chunking of the matrix products differs).
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeweave.errors import RuntimeStageError
from edgeweave.models import load
from edgeweave.runtime.engine import EngineSession
from edgeweave.runtime.engines.base import EngineConfig, SessionNotFound
from edgeweave.runtime.engines.torch import TorchStageEngine
from edgeweave.runtime.generate import SamplingParams
from edgeweave.runtime.prefix import MIN_TAIL, PrefixStore
from edgeweave.runtime.sequence import Generation, advance
from edgeweave.types import Shard
from tests.conftest import make_cfg, random_model, save_folder

TOL = 1e-4
_rng = np.random.default_rng(7)
PREFIX = [1, *(int(t) for t in _rng.integers(3, 128, 39))]  # 40 tokens
PROMPTS = [
    PREFIX + [40, 41, 42],                 # cold: nothing cached yet
    PREFIX + [50, 51, 52, 53],             # forks after the 40 shared tokens
    PREFIX[:20] + [60, 61, 62, 63, 64],    # shares 20 (one whole block and 4 more)
    PREFIX + [50, 51, 52, 53],             # an exact repeat: all but the last two
    [5, 6, 7, 8, 9],                       # shares nothing
]
CACHED = [0, 40, 20, 42, 0]
PARAMS = SamplingParams(max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):  # type: ignore[no-untyped-def]
    folder = save_folder(random_model(make_cfg(), seed=3), tmp_path_factory.mktemp("m") / "t")
    return load(str(folder))


@pytest.fixture(scope="module", params=["torch", "onnx"])
def engine(request, lm, tmp_path_factory):  # type: ignore[no-untyped-def]
    n = lm.model.cfg.num_layers
    if request.param == "torch":
        return TorchStageEngine(EngineConfig("tiny", Shard(0, n, n)), model=lm.model)
    pytest.importorskip("onnxruntime")
    from edgeweave.runtime.engines.onnx import SessionProfile, engine_from_model
    from edgeweave.runtime.engines.onnx_export import ExportSpec

    cfg = EngineConfig("tiny", Shard(0, n, n), "fp32", backend="onnx", threads=1)
    spec = ExportSpec(0, n, weights="fp32", max_len=lm.model.cfg.max_position)
    return engine_from_model(lm.model, cfg, tmp_path_factory.mktemp("onnx"), spec,
                             SessionProfile(threads=1))


def _generate(engine, lm, prompt, store, chunk=16):  # type: ignore[no-untyped-def]
    """One request as the serve scheduler runs it: chunked prefill, then greedy decode."""
    s = EngineSession(engine, len(prompt) + PARAMS.max_tokens, prefix=store)
    gen = Generation(s, lm.tokenizer, prompt, PARAMS)
    while not gen.finished:
        gen.feed(advance(s, gen.next_input(chunk)))
    s.close()
    return gen.tokens, gen.metrics().cached_tokens


@pytest.mark.usefixtures("one_torch_thread")
def test_greedy_tokens_are_the_same_with_and_without_the_cache(engine, lm):
    # Prepare: the reference has no prefix cache at all
    want = [_generate(engine, lm, p, None)[0] for p in PROMPTS]
    store = PrefixStore(engine, 64 << 20)
    # Execute
    got = [_generate(engine, lm, p, store) for p in PROMPTS]
    # Assert: identical tokens; the reuse covers exactly the shared tokens (an exact repeat
    # leaves its last two tokens to compute)
    assert [t for t, _ in got] == want
    assert [c for _, c in got] == CACHED
    u = store.usage()
    assert u.hit_tokens == sum(CACHED) and u.queried_tokens == sum(map(len, PROMPTS))
    # donors: the first two prompts and the 20-token fork (the repeat added nothing, the
    # last prompt is shorter than a block); they are not sessions, and cost what they hold
    assert u.donors == 3 and not (store.donors() & set(engine.sessions()))
    assert u.nbytes == _per_token(engine) * sum(len(p) for p in PROMPTS[:3])
    store.clear()
    assert store.usage().nbytes == 0


@pytest.mark.usefixtures("one_torch_thread")
def test_logits_after_a_reused_prefix_match_a_full_prefill(engine):
    store = PrefixStore(engine, 64 << 20)
    a = EngineSession(engine, 64, prefix=store)
    a.prefill(PROMPTS[0])
    a.keep_prefix(PROMPTS[0])
    a.close()
    cold = EngineSession(engine, 64)
    want = cold.prefill(PROMPTS[1])
    cold.close()
    warm = EngineSession(engine, 64, prefix=store)
    assert warm.reuse_prefix(PROMPTS[1]) == 40
    assert engine.length(warm.id) == 40
    got = warm.extend(PROMPTS[1][40:])
    assert float(np.abs(got - want).max()) < TOL
    # and decoding goes on from the same cache
    tok = int(np.argmax(got))
    assert float(np.abs(warm.decode(tok) - cold_decode(engine, PROMPTS[1], tok)).max()) < TOL
    warm.close()
    store.clear()


def cold_decode(engine, prompt, tok):  # type: ignore[no-untyped-def]
    s = EngineSession(engine, 64)
    s.prefill(prompt)
    out = s.decode(tok)
    s.close()
    return out


@pytest.mark.usefixtures("one_torch_thread")
def test_a_small_budget_evicts_the_least_recently_used_donor(engine, lm):
    # Prepare: room for two 43-token donors, not three
    per_token = _per_token(engine)
    store = PrefixStore(engine, per_token * 90)
    firsts = [[k + 3, *PREFIX[1:], 40, 41, 42] for k in range(3)]  # no two share a block
    _generate(engine, lm, firsts[0], store)
    oldest = store.donors()
    _generate(engine, lm, firsts[1], store)
    # Execute
    _generate(engine, lm, firsts[2], store)
    # Assert: the first donor was freed in the engine too; the other two still hit
    assert store.usage().donors == 2 and store.usage().nbytes <= per_token * 90
    assert oldest.isdisjoint(store.donors())
    with pytest.raises(SessionNotFound):
        engine.length(next(iter(oldest)))
    assert _generate(engine, lm, firsts[0], store)[1] == 0
    # kept again, it pushed firsts[1] out (firsts[2] was used later), not firsts[2]
    assert _generate(engine, lm, firsts[2], store)[1] == len(firsts[2]) - MIN_TAIL
    assert _generate(engine, lm, firsts[1], store)[1] == 0
    assert store.usage().donors == 2
    store.clear()


def _per_token(engine) -> int:  # type: ignore[no-untyped-def]
    engine.open("probe", 8)
    engine.forward("probe", np.array([[1, 2]]))
    engine.save_prefix("probe", "probe-prefix", 1)
    n = engine.session_bytes("probe-prefix")
    engine.close("probe-prefix")
    engine.close("probe")
    return n


def test_donors_are_copies_and_bad_copies_are_refused(engine):
    engine.open("src", 32)
    engine.forward("src", np.array([PROMPTS[0][:10]]))
    engine.save_prefix("src", "donor", 8)
    assert engine.length("donor") == 8 and "donor" not in engine.sessions()
    engine.forward("src", np.array([[3, 4]]))  # the donor is a copy: untouched by this
    engine.open("dst", 32)
    engine.load_prefix("donor", "dst", 5)
    assert engine.length("dst") == 5
    with pytest.raises(RuntimeStageError, match="holds 8"):
        engine.load_prefix("donor", "dst", 9)
    with pytest.raises(RuntimeStageError, match="already"):
        engine.save_prefix("src", "donor", 4)
    engine.open("tiny", 4)
    with pytest.raises(RuntimeStageError, match="larger max_len"):
        engine.load_prefix("donor", "tiny", 8)
    with pytest.raises(SessionNotFound):
        engine.load_prefix("nothing", "dst", 1)
    for s in ("src", "dst", "tiny", "donor"):
        engine.close(s)
    with pytest.raises(SessionNotFound):
        engine.length("donor")


@pytest.mark.usefixtures("one_torch_thread")
def test_batched_steps_reuse_prefixes_of_sessions_that_finished_their_prompt(engine, lm):
    """As the serve scheduler runs them: every live session steps in one batch; a request
    that arrives after another's prompt is in reuses it, mid-batch, while the earlier ones
    decode (a one-token tail rides with the decode rows)."""
    from edgeweave.runtime.sequence import step_batch

    want = [_generate(engine, lm, p, None)[0] for p in PROMPTS]
    store = PrefixStore(engine, 64 << 20)
    live: list[tuple[EngineSession, Generation]] = []
    gens: list[Generation] = []
    # the round each prompt arrives in: the first's 43 tokens take rounds 0-2 in chunks of
    # 16 and are kept in round 3, before its first decode step (not before its first token
    # is out), so the second (round 4) finds its donor; one arriving while the prompt it
    # shares is still being fed computes everything (nothing is kept yet)
    arrivals = (0, 4, 5, 6, 7)
    for rnd in range(60):
        if rnd in arrivals:
            p = PROMPTS[arrivals.index(rnd)]
            s = EngineSession(engine, len(p) + PARAMS.max_tokens, prefix=store)
            gens.append(Generation(s, lm.tokenizer, p, PARAMS))
            live.append((s, gens[-1]))
        if not live:
            break
        results = step_batch([(s, g.next_input(16)) for s, g in live])
        for (s, g), r in zip(list(live), results, strict=True):
            assert not isinstance(r, BaseException), r
            g.feed(r)
            if g.finished:
                live.remove((s, g))
                s.close()
    assert all(g.finished for g in gens) and len(gens) == len(PROMPTS)
    assert [g.tokens for g in gens] == want
    assert [g.cached_tokens for g in gens] == CACHED
    store.clear()
