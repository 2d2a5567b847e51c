"""Speculative sampling's rejection rule (``sampling.speculative_pick``) keeps the target's
distribution: statistical checks with power (the same check rejects two wrong rules), the
acceptance rate sum(min(p, q)), the greedy identity, the guards, and a property test that
no masked token is ever returned."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from edgeweave.errors import GenerationError
from edgeweave.runtime.sampling import SamplingParams, distribution, sample, speculative_pick

V = 8  # a small vocabulary: every bin gets thousands of draws
N = 20000
P_MIN = 1e-3  # a right rule fails a case 1 time in 1000; a wrong one here: p-value ~ 0

CASES = [
    (SamplingParams(temperature=1.0), ()),
    (SamplingParams(temperature=0.7, top_k=5), ()),
    (SamplingParams(temperature=1.3, top_p=0.8), ()),
    (SamplingParams(temperature=0.9, top_k=6, top_p=0.9, repetition_penalty=1.3), (0, 2)),
]


def _chi2_pvalue(counts: np.ndarray, p: np.ndarray) -> float:
    """Pearson's test that ``counts`` were drawn from ``p``; a draw outside p's support is
    an outright failure. Bins expecting fewer than 5 are pooled (the chi-square
    approximation needs about 5 per bin)."""
    if counts[p == 0].any():
        return 0.0
    n = counts.sum()
    expected = p * n
    small = (expected < 5) & (p > 0)
    obs = list(counts[(expected >= 5)]) + ([counts[small].sum()] if small.any() else [])
    exp = list(expected[(expected >= 5)]) + ([expected[small].sum()] if small.any() else [])
    if len(obs) < 2:  # one token holds all the mass: nothing to test but the support
        return 1.0
    return float(stats.chisquare(obs, exp).pvalue)


def _draw(q: np.ndarray, rng: np.random.Generator) -> int:
    return int(rng.choice(q.size, p=q))


def _case(i: int, params: SamplingParams, history: tuple[int, ...]):
    """Target logits, and a draft distribution q: the draft's own logits through the same
    params (as runtime.speculative does) for even cases, an unrelated full-support q (mass
    on tokens the target masks) for odd ones."""
    g = np.random.default_rng(100 + i)
    target = (g.standard_normal(V) * 1.5).astype(np.float32)
    if i % 2 == 0:
        draft = target + (g.standard_normal(V) * 0.8).astype(np.float32)
        q = distribution(draft, params, history)
    else:
        q = g.dirichlet(np.ones(V))
    return target, q


def _run(rule, target, q, params, history, seed=0):
    rng = np.random.default_rng(seed)
    counts = np.zeros(V, np.int64)
    accepted = 0
    for _ in range(N):
        d = _draw(q, rng)
        tok, acc = rule(target, q, d, params, list(history), rng)
        counts[tok] += 1
        accepted += acc
    return counts, accepted / N


@pytest.mark.parametrize("i", range(len(CASES)))
def test_rule_output_follows_the_target_and_accepts_sum_min_p_q(i):
    params, history = CASES[i]
    target, q = _case(i, params, history)
    p = distribution(target, params, list(history))
    assert not np.allclose(p, q, atol=0.02)  # a case where the rule has work to do

    counts, rate = _run(speculative_pick, target, q, params, history)

    assert _chi2_pvalue(counts, p) > P_MIN
    alpha = float(np.minimum(p, q).sum())
    se = np.sqrt(alpha * (1 - alpha) / N)
    assert abs(rate - alpha) <= 3 * se, (rate, alpha, se)


def _accept_always(target, q, d, params, history, rng):
    return d, True


def _resample_p_on_reject(target, q, d, params, history, rng):
    """Right acceptance test, wrong correction: draws p instead of the residual, which
    gives min(p, q) + (1 - alpha) p, not p."""
    p = distribution(target, params, history)
    if rng.random() * q[d] < p[d]:
        return d, True
    return int(rng.choice(p.size, p=p)), False


@pytest.mark.parametrize("wrong", [_accept_always, _resample_p_on_reject])
def test_the_check_has_power_against_wrong_rules(wrong):
    params, history = CASES[0]
    target, q = _case(0, params, history)
    p = distribution(target, params, list(history))

    counts, _ = _run(wrong, target, q, params, history)

    assert _chi2_pvalue(counts, p) < 1e-6


def test_greedy_is_the_target_argmax_and_draws_nothing():
    params = SamplingParams(temperature=0.0, repetition_penalty=1.5)
    target = np.array([0.5, 3.0, 2.9, -1.0], np.float32)
    rng = np.random.default_rng(7)
    before = rng.bit_generator.state
    q = np.array([0.1, 0.2, 0.6, 0.1])

    # history [1] penalises token 1 (3.0 / 1.5 = 2.0): token 2 is the argmax
    assert speculative_pick(target, q, 2, params, [1], rng) == (2, True)
    assert speculative_pick(target, q, 1, params, [1], rng) == (2, False)
    assert speculative_pick(target, None, 0, params, [1], None) == (2, False)
    assert rng.bit_generator.state == before
    assert sample(target, params, [1], None) == 2


def test_a_deterministic_proposal_and_an_impossible_draft_token_still_follow_p():
    params = SamplingParams(temperature=1.0, top_k=6)
    target = (np.random.default_rng(5).standard_normal(V) * 1.5).astype(np.float32)
    p = distribution(target, params, [])
    rng = np.random.default_rng(1)
    d = int(np.argmax(p))
    q0 = np.full(V, 1.0 / (V - 1))
    q0[d] = 0.0  # the draft claims it could not have drawn d

    one_hot = np.bincount([speculative_pick(target, None, d, params, [], rng)[0]
                           for _ in range(N // 2)], minlength=V)
    impossible = np.bincount([speculative_pick(target, q0, d, params, [], rng)[0]
                              for _ in range(N // 2)], minlength=V)

    assert _chi2_pvalue(one_hot, p) > P_MIN
    assert _chi2_pvalue(impossible, p) > P_MIN


def test_a_residual_without_mass_falls_back_to_p():
    # q = 2p (not a distribution, but q >= p everywhere): half the drafts are rejected and
    # max(p - q, 0) is all zeros, so the rejected half must be drawn from p itself
    params = SamplingParams(temperature=1.0)
    target = np.log(np.array([0.4, 0.3, 0.2, 0.1], np.float32))
    p = distribution(target, params, [])
    rng = np.random.default_rng(2)
    picks = [speculative_pick(target, 2 * p, _draw(p, rng), params, [], rng)
             for _ in range(N // 2)]

    counts = np.bincount([t for t, _ in picks], minlength=4)
    assert _chi2_pvalue(counts, p) > P_MIN
    assert abs(np.mean([a for _, a in picks]) - 0.5) < 0.03


def test_distribution_is_what_sample_draws_from():
    g = np.random.default_rng(9)
    for params in [c[0] for c in CASES]:
        logits = (g.standard_normal(50) * 2).astype(np.float32)
        p = distribution(logits, params, [3, 4])
        assert p.dtype == np.float64 and abs(p.sum() - 1) < 1e-12
        cdf = np.cumsum(p)
        for seed in range(300):
            u = np.random.default_rng(seed).random()
            want = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
            assert sample(logits, params, [3, 4], np.random.default_rng(seed)) == want
    greedy = distribution(np.array([1.0, 3.0, 2.0], np.float32), SamplingParams(), [])
    assert greedy.tolist() == [0.0, 1.0, 0.0]


def test_bad_drafts_are_refused_with_the_fix():
    params = SamplingParams(temperature=1.0)
    target = np.zeros(4, np.float32)
    with pytest.raises(GenerationError, match="same vocabulary|share the target's vocabulary"):
        speculative_pick(target, np.full(5, 0.2), 0, params, [], None)
    with pytest.raises(GenerationError, match=r"token id in \[0, 4\)"):
        speculative_pick(target, np.full(4, 0.25), 4, params, [], None)
    assert speculative_pick(target, np.full(4, 0.25), np.int64(3), params, [], None)[0] in range(4)


@settings(max_examples=300, deadline=None)
@given(
    logits=st.lists(st.floats(-20, 20), min_size=2, max_size=16),
    q_raw=st.lists(st.floats(0, 1), min_size=16, max_size=16),
    temperature=st.sampled_from([0.0, 0.3, 1.0, 2.0]),
    top_k=st.integers(0, 6),
    top_p=st.floats(0.05, 1.0),
    draft=st.integers(0, 15),
    seed=st.integers(0, 2**32 - 1),
)
def test_never_returns_a_masked_token(logits, q_raw, temperature, top_k, top_p, draft, seed):
    v = len(logits)
    target = np.array(logits, np.float32)
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    q = np.array(q_raw[:v])
    # any draft: q may be all zeros (no distribution) or put its mass where p is masked
    q = q / q.sum() if q.sum() > 0 else q
    p = distribution(target, params, [])

    tok, accepted = speculative_pick(target, q, draft % v, params, [],
                                     np.random.default_rng(seed))

    assert p[tok] > 0
    assert tok == draft % v or not accepted  # "accepted" means the draft token is the output
