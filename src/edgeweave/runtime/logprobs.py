"""Log-probabilities of generated tokens: the sampled token's and the likeliest alternatives'.

Which logits: the model's own, as the engine returned them, before the repetition penalty,
temperature, top-k/top-p and a structured-output mask. That is vLLM's default
(``logprobs_mode="raw_logprobs"``) and llama-server's (``post_sampling_probs`` off): the
figure then says what the model believes, and the same request at another temperature or
with another grammar reports the same numbers for the same tokens. Under a format mask a
listed alternative may therefore be a token the format forbids; the sampled token is always
one it allows. A plan whose logits codec keeps only the top 64 logits gives log-softmax over
those 64 (the rest are -inf there).

A pure function of one (vocab,) row, so a batched decode loop computes it per row the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeweave.errors import GenerationError

MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat; vLLM's default max_logprobs


@dataclass(frozen=True)
class TokenLogprob:
    """One generated position: the sampled ``token`` with its log-probability, and the
    ``top`` alternatives as ``(token id, logprob)``, likeliest first (ties: lower id first)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def check_top(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_TOP_LOGPROBS:
        raise GenerationError(f"logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}] (got "
                              f"{k!r}): 0 gives the sampled token's logprob alone")


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(vocab,) float64 log-probabilities; -inf logits stay -inf."""
    z = np.asarray(logits, dtype=np.float64)
    m = np.max(z)
    if not np.isfinite(m):
        raise GenerationError("the logits hold no finite value: the engine returned garbage")
    z = z - m
    return z - np.log(np.sum(np.exp(z)))


def token_logprob(logits: np.ndarray, token: int, k: int) -> TokenLogprob:
    """The record of ``token`` sampled from ``logits`` with its ``k`` likeliest alternatives."""
    lp = log_softmax(logits)
    top: tuple[tuple[int, float], ...] = ()
    if k:
        k = min(k, lp.size)
        idx = np.argpartition(-lp, k - 1)[:k]
        idx = idx[np.lexsort((idx, -lp[idx]))]  # by logprob descending, then id
        top = tuple((int(i), float(lp[i])) for i in idx)
    return TokenLogprob(int(token), float(lp[token]), top)
