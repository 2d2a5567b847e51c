"""Token logprobs: the pure record of one logits row, and what generation attaches to tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeweave.errors import GenerationError
from edgeweave.models.checkpoint import load_folder
from edgeweave.runtime.engine import LocalEngine
from edgeweave.runtime.generate import SamplingParams, generate, stream_generate
from edgeweave.runtime.logprobs import MAX_TOP_LOGPROBS, token_logprob


@pytest.fixture
def lm(tiny_folder):
    return load_folder(tiny_folder)


def test_a_record_equals_torch_log_softmax_and_lists_the_top_k_in_order():
    logits = np.random.default_rng(0).normal(0, 3, 500).astype(np.float32)
    ref = torch.log_softmax(torch.from_numpy(logits).double(), -1).numpy()
    rec = token_logprob(logits, 17, 5)
    assert rec.token == 17 and rec.logprob == pytest.approx(ref[17], abs=1e-6)
    want = np.argsort(-ref)[:5]
    assert [t for t, _ in rec.top] == list(want)
    assert [lp for _, lp in rec.top] == pytest.approx(list(ref[want]), abs=1e-6)
    assert token_logprob(logits, 17, 0).top == ()


def test_minus_infinity_logits_are_impossible_tokens_not_nan():
    logits = np.full(100, -np.inf, dtype=np.float32)
    logits[[3, 9]] = [1.0, 2.0]  # what a top-k logits codec leaves
    rec = token_logprob(logits, 9, 4)
    assert rec.logprob == pytest.approx(-np.log1p(np.exp(-1.0)))
    assert [t for t, _ in rec.top[:2]] == [9, 3] and rec.top[2][1] == -np.inf
    with pytest.raises(GenerationError, match="no finite value"):
        token_logprob(np.full(4, -np.inf), 0, 1)


@pytest.mark.parametrize("k", [-1, MAX_TOP_LOGPROBS + 1, True, 2.0])
def test_sampling_params_refuse_a_count_outside_0_to_20(k):
    with pytest.raises(GenerationError, match="logprobs must be an integer"):
        SamplingParams(logprobs=k)


def _reference_logprobs(lm, prompt_ids, tokens):
    """log-softmax of the model's raw logits at every generated position (full recompute)."""
    seq = list(prompt_ids)
    out = []
    with torch.no_grad():
        for t in tokens:
            out.append(torch.log_softmax(lm.model(torch.tensor([seq]))[0, -1].double(), -1))
            seq.append(t)
    return out


def test_greedy_generation_samples_the_top_alternative_and_matches_the_model(lm):
    eng = LocalEngine(lm.model, max_len=128)
    ids = lm.tokenizer.encode("the sensor reads", add_special_tokens=True)
    res = generate(eng, lm.tokenizer, ids, SamplingParams(max_tokens=8, ignore_eos=True,
                                                          logprobs=3))
    assert len(res.logprobs) == len(res.token_ids) == 8
    ref = _reference_logprobs(lm, ids, res.token_ids)
    for tok, rec, lp in zip(res.token_ids, res.logprobs, ref, strict=True):
        assert rec.token == tok and rec.top[0] == (tok, pytest.approx(rec.logprob))
        assert rec.logprob == pytest.approx(float(lp[tok]), abs=1e-4)
        assert len(rec.top) == 3 and sum(np.exp(p) for _, p in rec.top) <= 1 + 1e-9


def test_logprobs_come_from_the_raw_logits_whatever_the_sampling_settings(lm):
    # temperature, top-k and the repetition penalty change which token is drawn, not the
    # figure reported for it: it is the model's own probability (vLLM's raw_logprobs)
    eng = LocalEngine(lm.model, max_len=128)
    ids = lm.tokenizer.encode("the door", add_special_tokens=True)
    params = SamplingParams(max_tokens=6, ignore_eos=True, temperature=1.5, top_k=5,
                            repetition_penalty=1.3, seed=7, logprobs=2)
    res = generate(eng, lm.tokenizer, ids, params)
    ref = _reference_logprobs(lm, ids, res.token_ids)
    for tok, rec, lp in zip(res.token_ids, res.logprobs, ref, strict=True):
        assert rec.logprob == pytest.approx(float(lp[tok]), abs=1e-4)
        assert [t for t, _ in rec.top] == [int(i) for i in torch.topk(lp, 2).indices]


def test_stream_pieces_carry_one_record_per_token_and_none_when_not_asked(lm):
    eng = LocalEngine(lm.model, max_len=128)
    on = list(stream_generate(eng, lm.tokenizer, "the sensor", SamplingParams(
        max_tokens=7, ignore_eos=True, logprobs=0)))
    assert all(len(p.logprobs) == len(p.tokens) for p in on)
    assert [r.token for p in on for r in p.logprobs] == [t for p in on for t in p.tokens]
    off = list(stream_generate(eng, lm.tokenizer, "the sensor", SamplingParams(
        max_tokens=7, ignore_eos=True)))
    assert all(p.logprobs == () for p in off)
    assert [t for p in off for t in p.tokens] == [t for p in on for t in p.tokens]


@pytest.mark.integration
def test_byte_level_token_bytes_join_into_the_text_even_inside_a_character():
    from edgeweave.runtime.local import tokenizer_for

    tok = tokenizer_for("smollm2-135m-instruct")
    text = " Paris ünïcode 日本 ok"
    ids = tok.encode(text)
    pieces = [tok.token_bytes(i) for i in ids]
    assert b"".join(pieces) == text.encode("utf-8")
    split = [p for p in pieces if b"\xef\xbf\xbd" in p.decode("utf-8", "replace").encode()]
    assert split  # some tokens hold part of a character: only their bytes are exact
    assert tok.token_bytes(tok.eos_token_id) == tok.eos_token.encode()
