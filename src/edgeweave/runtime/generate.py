"""Our decode loop, layered as mlx_lm does it: one step -> a stream -> final text.

``generate_step`` samples token ids from any :class:`LogitsEngine`; ``stream_generate`` turns
them into text deltas (incremental detokenisation, stop strings) with metrics attached to
every response; ``generate`` collects the stream. HTTP and CLI are thin wrappers over the
stream.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from edgeweave.errors import GenerationError
from edgeweave.models.tokenizer import Tokenizer
from edgeweave.runtime.engine import LogitsEngine
from edgeweave.runtime.logprobs import TokenLogprob, token_logprob
from edgeweave.runtime.responses import (
    GenerationMetrics,
    GenerationResponse,
    GenerationResult,
    peak_rss_mb,
)
from edgeweave.runtime.sampling import (
    GREEDY_BELOW,
    MAX_SEED,
    MAX_TEMPERATURE,
    SamplingParams,
    sample,
)
from edgeweave.runtime.sequence import Generation, advance
from edgeweave.runtime.text import IncrementalDecoder, check_text

if TYPE_CHECKING:
    from edgeweave.runtime.constraints import Matcher

# The pieces below the loop have modules of their own (``sampling``, ``text``, ``responses``),
# which ``runtime.sequence`` imports too; users import them from here, as before.
__all__ = [
    "GREEDY_BELOW", "MAX_SEED", "MAX_TEMPERATURE", "GenerationMetrics", "GenerationResponse",
    "GenerationResult", "IncrementalDecoder", "SamplingParams", "check_text", "encode_prompt",
    "generate", "generate_step", "generate_steps", "peak_rss_mb", "sample", "stream_generate",
]


def generate_step(engine: LogitsEngine, prompt_ids: Sequence[int], params: SamplingParams,
                  eos_ids: Sequence[int] = (), matcher: Matcher | None = None
                  ) -> Iterator[int]:
    """Yield sampled token ids until ``max_tokens``, a stop token (which is not yielded) or,
    with a ``matcher`` (``params.output`` compiled for the tokenizer), the end of the format:
    every token the format forbids is masked out before sampling."""
    for tok, _ in generate_steps(engine, prompt_ids, params, eos_ids, matcher):
        yield tok


def generate_steps(engine: LogitsEngine, prompt_ids: Sequence[int], params: SamplingParams,
                   eos_ids: Sequence[int] = (), matcher: Matcher | None = None
                   ) -> Iterator[tuple[int, TokenLogprob | None]]:
    """:func:`generate_step` with each token's :class:`TokenLogprob` (None unless
    ``params.logprobs`` is set), taken from the engine's logits before any mask."""
    if not prompt_ids:
        raise GenerationError("the prompt is empty: give at least one token of text")
    if len(prompt_ids) + params.max_tokens > engine.max_len:
        raise GenerationError(
            f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
            f"context of {engine.max_len} tokens: shorten the prompt or lower max_tokens"
        )
    rng = np.random.default_rng(params.seed)  # None: fresh entropy
    stops = set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_ids))
    history = list(prompt_ids)
    logits = engine.prefill(list(prompt_ids))
    k = params.logprobs
    for _ in range(params.max_tokens):
        raw = logits
        if matcher is not None:
            logits = matcher.mask(logits)
            if not np.isfinite(logits).any():
                raise GenerationError("no token the output format allows is among the logits "
                                      "this plan returns: serve structured output with full "
                                      "logits (logits codec fp32 or fp16, not top64)")
        tok = sample(logits, params, history, rng)
        if tok in stops:
            return
        if matcher is not None:
            matcher.accept(tok)
        yield tok, None if k is None else token_logprob(raw, tok, k)
        history.append(tok)
        if matcher is not None and matcher.done:
            return  # the format is complete: nothing else may follow
        if len(history) - len(prompt_ids) >= params.max_tokens:
            return
        logits = engine.decode(tok)

def encode_prompt(tokenizer: Tokenizer, prompt: str | Sequence[int] | Sequence[dict[str, str]],
                  chat: bool = False) -> list[int]:
    """Text, ready token ids, or chat messages -> token ids."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise GenerationError("the prompt is empty: give some text to continue or answer")
        check_text(prompt)
        if chat:
            return tokenizer.encode_chat([{"role": "user", "content": prompt}])
        return tokenizer.encode(prompt, add_special_tokens=True)
    items = list(prompt)
    if not items:
        raise GenerationError("the prompt is empty: give at least one message or token")
    if isinstance(items[0], dict):
        if not any(str(m.get("content", "")).strip() for m in items):
            raise GenerationError("every chat message is empty: give some content")
        for m in items:
            check_text(str(m.get("content", "")), f"the content of a {m.get('role')!r} message")
        return tokenizer.encode_chat(items)
    return [int(t) for t in items]


def stream_generate(engine: LogitsEngine, tokenizer: Tokenizer,
                    prompt: str | Sequence[int] | Sequence[dict[str, str]],
                    params: SamplingParams | None = None, chat: bool = False
                    ) -> Iterator[GenerationResponse]:
    """Stream text deltas; every response carries the metrics so far, the last one is final.

    The steps are those of ``runtime.sequence.Generation`` (the serve scheduler runs the same
    state machine for many requests in one batch); here one session feeds it alone."""
    gen = Generation(engine, tokenizer, encode_prompt(tokenizer, prompt, chat), params)
    while not gen.finished:
        yield from gen.feed(advance(engine, gen.next_input()))


def generate(engine: LogitsEngine, tokenizer: Tokenizer,
             prompt: str | Sequence[int] | Sequence[dict[str, str]],
             params: SamplingParams | None = None, chat: bool = False) -> GenerationResult:
    """Whole completion with its metrics."""
    pieces: list[str] = []
    tokens: list[int] = []
    logprobs: list[TokenLogprob] = []
    last = None
    for r in stream_generate(engine, tokenizer, prompt, params, chat):
        pieces.append(r.text)
        tokens.extend(r.tokens)
        logprobs.extend(r.logprobs)
        last = r
    assert last is not None  # stream_generate always yields a final response
    return GenerationResult("".join(pieces), tokens, last.finish_reason or "length", last.metrics,
                            logprobs=logprobs)
