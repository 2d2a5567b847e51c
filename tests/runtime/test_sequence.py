"""The per-session generation state machine: chunked prefill, stop handling, batching."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeweave.errors import GenerationError
from edgeweave.models import load
from edgeweave.runtime.engine import EngineSession
from edgeweave.runtime.engines.base import EngineConfig
from edgeweave.runtime.engines.torch import TorchStageEngine
from edgeweave.runtime.generate import SamplingParams, generate
from edgeweave.runtime.sequence import Generation, StepInput, advance, chunk_size, step_batch
from edgeweave.types import Shard

PROMPT = [1, *range(10, 40)]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):  # type: ignore[no-untyped-def]
    from tests.conftest import make_cfg, random_model, save_folder

    folder = save_folder(random_model(make_cfg()), tmp_path_factory.mktemp("m") / "tiny")
    return load(str(folder))


@pytest.fixture(scope="module")
def engine(lm):  # type: ignore[no-untyped-def]
    return TorchStageEngine(EngineConfig("tiny", Shard(0, 4, 4)), model=lm.model)


def _run(gen: Generation, engine_session, chunk: int) -> tuple[str, list[int], str | None]:
    text = ""
    while not gen.finished:
        text += "".join(r.text for r in gen.feed(advance(engine_session, gen.next_input(chunk))))
    return text, gen.tokens, gen.finish_reason


@pytest.mark.parametrize("chunk", [1, 7, 30, 0])
def test_chunked_prefill_equals_the_whole_prompt(lm, engine, chunk):
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    want = generate(EngineSession(engine, 64), lm.tokenizer, PROMPT, params)
    s = EngineSession(engine, 64)
    text, tokens, finish = _run(Generation(s, lm.tokenizer, PROMPT, params), s, chunk)
    s.close()
    assert (text, tokens, finish) == (want.text, want.token_ids, want.finish_reason)


def test_steps_tell_what_to_feed_and_refuse_after_the_end(lm, engine):
    s = EngineSession(engine, 64)
    gen = Generation(s, lm.tokenizer, PROMPT, SamplingParams(max_tokens=1, ignore_eos=True))
    first = gen.next_input(8)
    assert first == StepInput(tuple(PROMPT[:8]), True) and gen.prefilling
    assert gen.feed(advance(s, first)) == []  # the prompt is not complete yet
    rest = gen.next_input()
    assert rest == StepInput(tuple(PROMPT[8:]), False)
    out = gen.feed(advance(s, rest))
    assert out[-1].finish_reason == "length" and len(gen.tokens) == 1
    with pytest.raises(GenerationError, match="finished"):
        gen.next_input()
    s.close()


def test_a_failing_item_of_a_batch_fails_alone(lm, engine):
    a, b = EngineSession(engine, 8), EngineSession(engine, 64)
    items = [(a, StepInput(tuple(range(1, 12)), True)), (b, StepInput((1, 5, 9), True))]
    out = step_batch(items)  # a's prompt does not fit its 8-token cache
    assert isinstance(out[0], GenerationError) and "KV cache holds 8" in str(out[0])
    assert isinstance(out[1], np.ndarray) and out[1].shape == (lm.model.cfg.vocab_size,)
    a.close()
    b.close()


def test_prefill_never_ends_in_a_one_token_chunk(lm, engine):
    # a one-token step takes the low-bit kernels' single-row path (runtime.prefix.MIN_TAIL)
    s = EngineSession(engine, 64)
    gen = Generation(s, lm.tokenizer, PROMPT[:17], SamplingParams(max_tokens=1))
    sizes = []
    while gen.prefilling:
        step = gen.next_input(8)
        sizes.append(len(step.ids))
        gen.feed(advance(s, step))
    s.close()
    assert sizes == [8, 7, 2]


@given(st.integers(1, 300), st.lists(st.integers(0, 70), min_size=1, max_size=40))
def test_a_prompt_is_never_cut_into_a_one_token_chunk(n, limits):
    """Whatever limits the rounds' budgets give (1, 2, 0 = all, ...), the chunks cover the
    prompt, each within its limit but for one extra token, and none is one token long unless
    the whole prompt is: where a prompt is cut then never changes its numbers."""
    left, chunks = n, []
    for limit in limits * (n + 1):
        if not left:
            break
        c = chunk_size(left, limit)
        assert 1 <= c <= left and (limit <= 0 or c <= max(limit, 2) + 1)
        chunks.append(c)
        left -= c
    assert sum(chunks) == n
    assert n == 1 or min(chunks) >= 2, chunks
