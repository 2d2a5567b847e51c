"""Sampling: the decoding settings of a request (:class:`SamplingParams`) and the pick of the
next token from logits (:func:`sample`, numpy: no torch on the serving path).

:func:`distribution` is the probability vector :func:`sample` draws from;
:func:`speculative_pick` is speculative decoding's rejection rule over it (a draft's proposed
token accepted or replaced so that the output still follows the target's distribution).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgeweave.errors import GenerationError
from edgeweave.runtime.logprobs import check_top
from edgeweave.runtime.text import check_text
from edgeweave.validate import is_int, is_number

if TYPE_CHECKING:
    from edgeweave.runtime.constraints import OutputFormat

MAX_TEMPERATURE = 2.0
MAX_SEED = 2**63 - 1  # a signed 64-bit value, as torch's and most servers' seeds


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings. ``temperature == 0`` means greedy.

    ``logprobs``: None computes none (no cost per token); ``k`` in [0, 20] attaches to every
    generated token its log-probability and its ``k`` likeliest alternatives, from the
    model's raw logits (see :mod:`edgeweave.runtime.logprobs` for why raw).
    """

    max_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    # structured output: a JSON object, a JSON schema, a label set or a regex
    output: OutputFormat | None = None
    logprobs: int | None = None

    def __post_init__(self) -> None:
        # the ranges OpenAI documents (temperature 0..2, top_p (0, 1]); inf or nan would turn
        # every probability into nan and sample garbage, so they are refused, not clamped
        t, p, rp = self.temperature, self.top_p, self.repetition_penalty
        checks = [
            (is_int(self.max_tokens) and self.max_tokens > 0,
             f"max_tokens must be > 0 (got {self.max_tokens!r}): ask for at least one token"),
            (is_number(t) and 0 <= t <= MAX_TEMPERATURE,
             f"temperature must be >= 0 and <= {MAX_TEMPERATURE:g} (got {t!r}): 0 is greedy, "
             "0.7-1.0 is typical"),
            (is_int(self.top_k) and self.top_k >= 0,
             f"top_k must be an integer >= 0, 0 disables it (got {self.top_k!r})"),
            (is_number(p) and 0 < p <= 1, f"top_p must be in (0, 1] (got {p!r}): 1 disables it, "
             "0.9 keeps the likeliest tokens holding 90% of the probability"),
            (is_number(rp) and rp > 0,
             f"repetition_penalty must be a finite number > 0, 1 disables it (got {rp!r})"),
            (self.seed is None or is_int(self.seed) and 0 <= self.seed <= MAX_SEED,
             f"seed must be an integer in [0, 2**63-1] (got {self.seed!r}): pick a smaller "
             "non-negative number, or leave it out for a random one"),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty"),
            (all(is_int(i) and i >= 0 for i in self.stop_token_ids),
             f"stop_token_ids must be non-negative integers (got {self.stop_token_ids!r})"),
            (self.output is None or isinstance(self.output, _output_format()),
             f"output must be a runtime.constraints.OutputFormat (got {self.output!r})"),
        ]
        for ok, msg in checks:
            if not ok:
                raise GenerationError(msg)
        for s in self.stop:
            check_text(s, "a stop string")
        if self.logprobs is not None:
            check_top(self.logprobs)
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))


def _output_format() -> type:
    from edgeweave.runtime.constraints import OutputFormat

    return OutputFormat


# Below this temperature sampling is greedy: dividing by it would overflow (vLLM's cut-off).
GREEDY_BELOW = 1e-5


def distribution(logits: np.ndarray, params: SamplingParams,
                 history: Sequence[int]) -> np.ndarray:
    """The (vocab,) float64 probabilities :func:`sample` draws from: repetition penalty,
    temperature, top-k, top-p as it applies them; greedy is one-hot at the argmax."""
    z = _penalized(logits, params, history)
    if params.temperature < GREEDY_BELOW:
        p = np.zeros(z.size, np.float64)
        p[int(np.argmax(z))] = 1.0
        return p
    w = _weights(z, params)
    return w / w.sum()


def sample(logits: np.ndarray, params: SamplingParams, history: Sequence[int],
           rng: np.random.Generator | None) -> int:
    """Pick the next token from (vocab,) logits (numpy: no torch on the serving path)."""
    z = _penalized(logits, params, history)
    if params.temperature < GREEDY_BELOW:
        return int(np.argmax(z))
    # the unnormalised weights, as before distribution() existed: seeded picks stay the same
    return draw(_weights(z, params), rng)


def speculative_pick(target_logits: np.ndarray, draft_probs: np.ndarray | None,
                     draft_token: int, params: SamplingParams, history: Sequence[int],
                     rng: np.random.Generator | None) -> tuple[int, bool]:
    """The next token by the speculative-sampling rule (Leviathan et al. 2023, Chen et al.
    2023) and whether it is ``draft_token``: with ``p = distribution(target_logits)`` and
    ``q = draft_probs`` (what the draft drew ``draft_token`` from; None: a deterministic
    proposal, one-hot), accept it with probability ``min(1, p[d] / q[d])``, otherwise draw
    from ``max(p - q, 0)`` renormalised. Either way the token follows ``p`` exactly.

    Greedy: the target's argmax, no draw (the text plain greedy decoding gives).
    """
    p = distribution(target_logits, params, history)
    d = _check_draft(p, draft_probs, draft_token)
    if params.temperature < GREEDY_BELOW:
        tok = int(np.argmax(p))
        return tok, tok == d
    rng = rng or np.random.default_rng()
    if draft_probs is None:
        q = np.zeros(p.size, np.float64)
        q[d] = 1.0
    else:
        q = np.asarray(draft_probs, dtype=np.float64)
    if q[d] <= 0:  # the draft could not have drawn d: no ratio to accept by, sample p itself
        tok = draw(p, rng)
        return tok, tok == d
    if rng.random() * q[d] < p[d]:  # u < p/q without dividing
        return d, True
    residual = np.maximum(p - q, 0.0)
    # p == q up to rounding leaves no residual mass (and no rejection either, in exact maths)
    tok = draw(residual if residual.sum() > 0 else p, rng)
    return tok, False


def _check_draft(p: np.ndarray, draft_probs: np.ndarray | None, draft_token: int) -> int:
    if draft_probs is not None and np.shape(draft_probs) != p.shape:
        raise GenerationError(
            f"draft_probs has shape {np.shape(draft_probs)} but the target's logits {p.shape}: "
            "the draft model must share the target's vocabulary (use a draft of the same "
            "model family and tokenizer)")
    # numpy ints too: a draft's token often comes out of np.argmax
    integral = isinstance(draft_token, int | np.integer) and not isinstance(draft_token, bool)
    if not (integral and 0 <= draft_token < p.size):
        raise GenerationError(f"draft_token must be a token id in [0, {p.size}) "
                              f"(got {draft_token!r}): pass the id the draft proposed")
    return int(draft_token)


def _penalized(logits: np.ndarray, params: SamplingParams,
               history: Sequence[int]) -> np.ndarray:
    """(vocab,) float32 logits after the repetition penalty (CTRL's: shrink seen tokens)."""
    logits = np.asarray(logits, dtype=np.float32)
    if params.repetition_penalty != 1.0 and history:
        idx = np.unique(np.asarray(history, dtype=np.int64))
        seen = logits[idx]
        logits = logits.copy()
        logits[idx] = np.where(seen > 0, seen / params.repetition_penalty,
                               seen * params.repetition_penalty)
    return logits


def _weights(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Unnormalised float64 weights after temperature, top-k and top-p (masked: 0)."""
    z = logits.astype(np.float64) / params.temperature  # float64: no overflow at small T
    if params.top_k and params.top_k < z.size:
        kth = np.partition(z, -params.top_k)[-params.top_k]
        z = np.where(z < kth, -np.inf, z)
    if params.top_p < 1.0:
        order = np.argsort(-z, kind="stable")
        p = np.exp(z[order] - z[order[0]])
        p /= p.sum()
        # drop a token once the mass *before* it already reaches top_p (keeps at least one)
        drop = (np.cumsum(p) - p) >= params.top_p
        z = z.copy()
        z[order[drop]] = -np.inf
    return np.exp(z - z.max())


def draw(weights: np.ndarray, rng: np.random.Generator | None) -> int:
    """One draw from non-negative weights: a single ``rng.random()`` against the cdf."""
    cdf = np.cumsum(weights)
    r = (rng or np.random.default_rng()).random() * cdf[-1]
    i = int(np.searchsorted(cdf, r, side="right"))
    if i >= weights.size:
        # u * total can round up to the total: the last token with weight, never a masked
        # one (this used to clamp to vocab - 1 whatever its weight)
        i = int(np.flatnonzero(weights)[-1])
    return i
