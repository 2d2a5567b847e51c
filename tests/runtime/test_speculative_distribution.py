"""Sampled speculation with drafting ahead keeps the target's distribution, end to end.

Target and draft are bigram models (logits depend on the last token only), so the exact
distribution of every next token is a row of the target's transition matrix. The target's
verify pass takes a few milliseconds, so the draft keeps drafting while it runs, and rounds
start from proposals drafted ahead. A chi-square test over the observed transitions accepts
the generated streams, and rejects streams sampled from the draft instead. Checked by hand
against two broken drafts: proposals that are the draft's argmax while claiming its
distribution (everywhere: p ~ 0; only those drafted ahead: p = 7e-25).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.stats import chi2

from edgeweave.models import load
from edgeweave.runtime.generate import stream_generate
from edgeweave.runtime.sampling import SamplingParams
from edgeweave.runtime.speculative import SpeculationConfig, SpeculativeSession

V = 6  # vocabulary
RUNS, TOKENS = 1000, 12
PROMPT = [0, 3]


class Bigram:
    """A LogitsEngine whose next-token logits are ``table[last token]``; ``delay_s`` is how
    long a verify pass (several positions in one step) takes."""

    def __init__(self, table: np.ndarray, delay_s: float = 0.0) -> None:
        self.table, self.delay_s = table, delay_s
        self.tokens: list[int] = []
        self.max_len = 10_000

    def _row(self, t: int) -> np.ndarray:
        return self.table[t].copy()

    def prefill(self, ids: list[int]) -> np.ndarray:
        self.tokens = list(ids)
        return self._row(ids[-1])

    def decode(self, token: int) -> np.ndarray:
        self.tokens.append(token)
        return self._row(token)

    def extend(self, ids: list[int]) -> np.ndarray:
        self.tokens += list(ids)
        return self._row(ids[-1])

    def verify(self, ids: list[int]) -> np.ndarray:
        time.sleep(self.delay_s)
        self.tokens += list(ids)
        return np.stack([self._row(t) for t in ids])

    def rewind(self, length: int) -> None:
        self.tokens = self.tokens[:length]

    def close(self) -> None:
        pass


def _tables() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    target = rng.normal(0, 2.0, (V, V)).astype(np.float32)  # peaked: guesses often hold
    draft = (target + rng.normal(0, 0.6, (V, V))).astype(np.float32)  # close, not equal
    return target, draft


def _transitions(streams: list[list[int]]) -> np.ndarray:
    counts = np.zeros((V, V))
    for s in streams:
        for a, b in zip(s, s[1:], strict=False):
            counts[a, b] += 1
    return counts


def _p_value(counts: np.ndarray, probs: np.ndarray) -> float:
    """Chi-square of the transition counts against the rows of ``probs`` (cells with an
    expected count below 5 pooled per row)."""
    stat, df = 0.0, 0
    for a in range(V):
        n = counts[a].sum()
        if n == 0:
            continue
        exp, obs = n * probs[a], counts[a]
        big = exp >= 5
        e = np.append(exp[big], exp[~big].sum()) if (~big).any() else exp[big]
        o = np.append(obs[big], obs[~big].sum()) if (~big).any() else obs[big]
        keep = e > 0
        stat += float((((o - e) ** 2) / e)[keep].sum())
        df += int(keep.sum()) - 1
    return float(chi2.sf(stat, df))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sample(tokenizer) -> dict:  # noqa: ANN001
    """Streams through speculation with drafting ahead, decoded as the server decodes
    (``Generation``, which applies the rejection rule to every proposal). Seeded, so the test
    repeats: the rule that keeps seeded requests from drafting ahead is tested elsewhere and
    lifted here."""
    target, draft = _tables()
    streams, ahead, rounds = [], 0, 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SpeculativeSession, "_may_draft_ahead", lambda self: True)
        for seed in range(RUNS):
            spec = SpeculativeSession(Bigram(target, delay_s=0.002), Bigram(draft),
                                      SpeculationConfig(k=2, overlap=True))
            params = SamplingParams(max_tokens=TOKENS, temperature=1.0, ignore_eos=True,
                                    seed=seed)
            toks = [t for r in stream_generate(spec, tokenizer, PROMPT, params)
                    for t in r.tokens]
            streams.append([PROMPT[-1], *toks])
            ahead += spec.counters.drafted_ahead
            rounds += spec.counters.rounds
            spec.close()
    return {"target": target, "draft": draft, "streams": streams, "ahead": ahead,
            "rounds": rounds}


def test_drafted_ahead_proposals_keep_the_target_distribution(tiny_folder):
    sampled = _sample(load(str(tiny_folder)).tokenizer)
    assert sampled["rounds"] > RUNS  # speculation ran
    assert sampled["ahead"] >= sampled["rounds"] // 5  # and rounds used proposals from ahead
    counts = _transitions(sampled["streams"])
    assert counts.sum() == RUNS * TOKENS
    assert _p_value(counts, _softmax(sampled["target"])) > 1e-4


def test_the_check_rejects_streams_of_the_wrong_distribution():
    """The same number of transitions, drawn from the draft's rows: the test must see it."""
    target, draft = _tables()
    rng = np.random.default_rng(0)
    probs = _softmax(draft)
    streams = []
    for _ in range(RUNS):
        s = [PROMPT[-1]]
        for _ in range(TOKENS):
            s.append(int(rng.choice(V, p=probs[s[-1]])))
        streams.append(s)
    assert _p_value(_transitions(streams), _softmax(target)) < 1e-4
