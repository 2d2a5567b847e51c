"""One request's generation as a state machine, so that a scheduler can step many at once.

``stream_generate`` pulls one :class:`Generation` through its engine; the serve scheduler
steps every active one together. The cycle is: :meth:`Generation.next_input` says what the
engine must be fed next (a chunk of the prompt, or the token sampled last), the caller runs
the engine (alone, or in one batched call with other sessions: :func:`step_batch`), and
:meth:`Generation.feed` consumes the logits after it: structured-output mask, sampling, stop
tokens, incremental detokenisation, stop strings, metrics. It returns the responses that step
produced (none while the prompt is still being fed or a character is incomplete).

Prefill in chunks appends the prompt to the session's cache piece by piece (``extend``), so a
long prompt shares the engine with running streams instead of stalling them; the logits of
the last chunk are those of the whole prompt.

Prefix cache (``runtime.prefix``): before its first input, a generation asks an engine that
has one (``reuse_prefix``) to start from the longest cached prefix of its prompt, and feeds
only the rest; once the prompt is in, it offers it for later requests (``keep_prefix``).
The metrics report the reused tokens as ``cached_tokens``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeweave.errors import GenerationError
from edgeweave.models.tokenizer import Tokenizer
from edgeweave.runtime.engine import LogitsEngine
from edgeweave.runtime.logprobs import TokenLogprob, token_logprob
from edgeweave.runtime.responses import GenerationMetrics, GenerationResponse, peak_rss_mb
from edgeweave.runtime.sampling import SamplingParams, sample, speculative_pick
from edgeweave.runtime.text import IncrementalDecoder, held_back


def chunk_size(left: int, limit: int) -> int:
    """Prompt tokens of the next chunk: at most ``limit`` (0: all ``left``), but never a chunk
    of one token, nor one that leaves one, while more than one is left (a limit of 1, or 2
    with 3 left, takes all 3): a one-token step runs attention's decode kernel, which rounds
    unlike the prompt kernel every longer chunk takes (and, on low-bit weights without
    ``--batch-invariant``, the single-row MatMul kernel), so where a prompt is cut would
    change its numbers; cut into chunks of two or more, it computes the same whatever the
    cuts (measured bit for bit on the bundled int4 model)."""
    if limit <= 0 or limit >= left:
        return left
    n = max(limit, 2)
    if left - n == 1:
        n = n - 1 if n > 2 else left
    return n


@dataclass(frozen=True)
class StepInput:
    """What the engine is fed next: token ids, and whether they start a new sequence."""

    ids: tuple[int, ...]
    fresh: bool


class Generation:
    """The generation state of one request on one ``LogitsEngine`` (see module docstring)."""

    def __init__(self, engine: LogitsEngine, tokenizer: Tokenizer, prompt_ids: Sequence[int],
                 params: SamplingParams | None = None) -> None:
        self._t0 = time.perf_counter()  # TTFT includes compiling an output format
        params = params or SamplingParams()
        ids = list(prompt_ids)
        if not ids:
            raise GenerationError("the prompt is empty: give at least one token of text")
        if len(ids) + params.max_tokens > engine.max_len:
            raise GenerationError(
                f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                f"context of {engine.max_len} tokens: shorten the prompt or lower max_tokens")
        self.engine, self.params, self.prompt = engine, params, ids
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self._stops = set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos))
        self._rng = np.random.default_rng(params.seed)  # None: fresh entropy
        self._matcher = None
        if params.output is not None:
            from edgeweave.runtime.constraints import Matcher

            self._matcher = Matcher(params.output, tokenizer)
        configure = getattr(engine, "configure_sampling", None)
        if callable(configure):  # a speculative engine drafts with the request's settings
            configure(params)
        self._detok = IncrementalDecoder(tokenizer)
        self.history = list(ids)
        self.tokens: list[int] = []
        self._pending: list[int] = []  # tokens whose text is held back
        self._pending_lp: list[TokenLogprob] = []  # their logprobs, when asked for
        self._emitted = 0
        self._fed = 0  # prompt tokens handed to the engine so far
        self._started = False  # the prefix cache was asked
        self.cached_tokens = 0  # prompt tokens the prefix cache supplied
        self._asked = 0  # tokens of the input last handed out
        self.finish_reason: str | None = None
        self._t_first: float | None = None
        self._peak = 0.0

    # -- the cycle ------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def prefilling(self) -> bool:
        return self._fed < len(self.prompt)

    def next_input(self, limit: int = 0) -> StepInput:
        """The next input; while prefilling, at most ``limit`` prompt tokens (0: the rest)."""
        if self.finished:
            raise GenerationError("the generation has finished: nothing more to feed")
        if not self._started:
            self._started = True
            reuse = getattr(self.engine, "reuse_prefix", None)
            if callable(reuse):
                self.cached_tokens = self._fed = int(reuse(self.prompt))
        if self.prefilling:
            n = chunk_size(len(self.prompt) - self._fed, limit)
            self._asked = n
            return StepInput(tuple(self.prompt[self._fed:self._fed + n]), self._fed == 0)
        self._asked = 1
        return StepInput((self.history[-1],), False)

    def feed(self, logits: np.ndarray) -> list[GenerationResponse]:
        """Consume the logits after the last input; return the responses this step made."""
        if self.prefilling:
            self._fed += self._asked
            if self.prefilling:
                return []  # more of the prompt to come
            keep = getattr(self.engine, "keep_prefix", None)
            if callable(keep):  # the cache holds exactly the prompt now, before any token
                keep(self.prompt)
        raw = logits  # logprobs come from the model's logits, before any mask or sampling
        if self._matcher is not None:
            logits = self._matcher.mask(logits)
            if not np.isfinite(logits).any():
                raise GenerationError("no token the output format allows is among the logits "
                                      "this plan returns: serve structured output with full "
                                      "logits (logits codec fp32 or fp16, not top64)")
        tok = self._pick(logits)
        if tok in self._stops:
            return [self._final()]
        if self._matcher is not None:
            self._matcher.accept(tok)
        if self._t_first is None:
            self._t_first = time.perf_counter()
        self.history.append(tok)
        self.tokens.append(tok)
        self._pending.append(tok)
        if self.params.logprobs is not None:
            self._pending_lp.append(token_logprob(raw, tok, self.params.logprobs))
        out: list[GenerationResponse] = []
        if self._detok.push(tok):  # else a multi-byte character is still incomplete
            text, stops = self._detok.text, self.params.stop
            hit = min((i for i in (text.find(s, max(self._emitted - len(s), 0)) for s in stops)
                       if i >= 0), default=-1)
            if hit >= 0:
                self.finish_reason = "stop"
                return [self._response(text[self._emitted:hit], "stop")]
            safe = len(text) - held_back(text, stops)
            if safe > self._emitted:
                out.append(self._response(text[self._emitted:safe], None))
                self._emitted = safe
        if (self._matcher is not None and self._matcher.done) \
                or len(self.tokens) >= self.params.max_tokens:
            out.append(self._final())
        return out

    def _pick(self, logits: np.ndarray) -> int:
        """The next token from the target's logits; where a speculative engine has a draft
        token for this position, by the rejection rule, which keeps the target's
        distribution (greedy: its argmax either way)."""
        proposal = getattr(self.engine, "proposal", None)
        drafted = proposal() if callable(proposal) else None
        if drafted is None:
            return sample(logits, self.params, self.history, self._rng)
        tok, _accepted = speculative_pick(logits, drafted.probs, drafted.token, self.params,
                                          self.history, self._rng)
        return tok

    # -- responses ------------------------------------------------------------------------
    def _final(self) -> GenerationResponse:
        # fewer tokens than asked: an end-of-sequence token or the end of the output format
        self.finish_reason = "stop" if len(self.tokens) < self.params.max_tokens else "length"
        text = self._detok.flush()
        return self._response(text[self._emitted:], self.finish_reason)

    def _response(self, text: str, finish: str | None) -> GenerationResponse:
        pending, self._pending = tuple(self._pending), []
        lps, self._pending_lp = tuple(self._pending_lp), []
        return GenerationResponse(text, pending, finish, self.metrics(finish is not None), lps)

    def metrics(self, final: bool = False) -> GenerationMetrics:
        now = time.perf_counter()
        ttft = (self._t_first or now) - self._t0
        n_dec = max(len(self.tokens) - 1, 0)
        extra = getattr(self.engine, "stats", None)
        # reading /proc per token would be ~30 us of a 5 ms token: every 32 tokens and at the end
        if final or not self._peak or len(self.tokens) % 32 == 0:
            self._peak = peak_rss_mb()
        t1 = self._t_first
        return GenerationMetrics(
            prompt_tokens=len(self.prompt), generated_tokens=len(self.tokens), ttft_s=ttft,
            # the prompt tokens computed: those the prefix cache supplied cost a copy only
            prefill_tps=(len(self.prompt) - self.cached_tokens) / ttft if ttft > 0 else 0.0,
            decode_tps=n_dec / (now - t1) if t1 and now > t1 and n_dec else 0.0,
            total_s=now - self._t0, peak_rss_mb=self._peak,
            extra=dict(extra() if callable(extra) else extra or {}),
            cached_tokens=self.cached_tokens)


# -- running inputs on engines --------------------------------------------------------------
def advance(engine: LogitsEngine, step: StepInput) -> np.ndarray:
    """Feed one input to one engine: a new sequence, one token, or a later prompt chunk."""
    if step.fresh:
        return engine.prefill(list(step.ids))
    if len(step.ids) == 1:
        return engine.decode(step.ids[0])
    extend = getattr(engine, "extend", None)
    if extend is None:
        raise GenerationError(f"{type(engine).__name__} cannot take a prompt in chunks: "
                              "prefill it whole")
    return extend(list(step.ids))


def step_batch(items: Sequence[tuple[LogitsEngine, StepInput]]
               ) -> list[np.ndarray | BaseException]:
    """Run every ``(engine, input)`` pair. Engines that share a backend (the same
    ``batch_key``: sessions of one in-process stage engine, or of one coordinator) step in
    one ``forward_many`` call of their class (``StageEngine.forward_batch`` underneath, or
    one FORWARD_BATCH frame per stage); any other engine steps alone. A failure belongs to
    its own item (returned in its place): a batch that fails as a whole is retried item by
    item to find the one to blame."""
    out: list[Any] = [None] * len(items)
    groups: dict[tuple[type, int], list[int]] = {}
    for j, (eng, _step) in enumerate(items):
        key = getattr(eng, "batch_key", None)
        if key is not None and hasattr(type(eng), "forward_many"):
            groups.setdefault((type(eng), key), []).append(j)
    for (cls, _key), rows in groups.items():
        if len(rows) < 2:
            continue
        try:
            results = cls.forward_many([items[j][0] for j in rows], [items[j][1] for j in rows])
        except Exception:  # noqa: BLE001 - one bad session: find it below, one by one
            continue
        for j, res in zip(rows, results, strict=True):
            out[j] = res
    for j, (eng, step) in enumerate(items):
        if out[j] is None:
            try:
                out[j] = advance(eng, step)
            except Exception as e:  # noqa: BLE001 - reported to that request only
                out[j] = e
    return out
