"""Our decode loop, layered as mlx_lm does it: one step -> a stream -> final text.

``generate_step`` samples token ids from any :class:`LogitsEngine`; ``stream_generate`` turns
them into text deltas (incremental detokenisation, stop strings) with metrics attached to
every response; ``generate`` collects the stream. HTTP and CLI are thin wrappers over the
stream.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edgeweave.errors import GenerationError
from edgeweave.models.tokenizer import Tokenizer
from edgeweave.runtime.engine import LogitsEngine
from edgeweave.runtime.logprobs import TokenLogprob, check_top, token_logprob

if TYPE_CHECKING:
    from edgeweave.runtime.constraints import Matcher, OutputFormat
from edgeweave.validate import is_int, is_number

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


def check_text(text: str, what: str = "the prompt") -> None:
    """Refuse text that is not valid Unicode (lone surrogates).

    Python hands undecodable bytes of ``argv`` (or of a file read with ``surrogateescape``)
    over as surrogates U+DC80..U+DCFF; the tokenizer cannot encode them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = ord(text[e.start])
        byte = f"byte {bad - 0xDC00:#04x}" if 0xDC80 <= bad <= 0xDCFF else f"U+{bad:04X}"
        raise GenerationError(
            f"{what} is not valid UTF-8 text ({byte} at character {e.start}): pass UTF-8 "
            "(check the terminal's locale, e.g. LANG=C.UTF-8, or re-encode the input file)"
        ) from None


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux's ``VmHWM`` belongs to the address space, which ``exec`` replaces; ``ru_maxrss``
    survives ``exec`` and starts at the parent's size after ``fork``, so a small child of a
    big benchmark process would report the parent's peak (seen: 1.5 GB for a 0.5 GB model).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # macOS and friends


@dataclass(frozen=True)
class GenerationMetrics:
    prompt_tokens: int
    generated_tokens: int
    ttft_s: float
    prefill_tps: float
    decode_tps: float
    total_s: float
    peak_rss_mb: float
    extra: dict[str, float] = field(default_factory=dict)  # engine stats, e.g. bytes on wire
    # prompt tokens whose KV came from the prefix cache (OpenAI's usage.prompt_tokens_details)
    cached_tokens: int = 0


@dataclass(frozen=True)
class GenerationResponse:
    """One streamed piece: new text, the tokens that produced it, metrics so far, and with
    ``SamplingParams.logprobs`` set one record per token (else empty)."""

    text: str
    tokens: tuple[int, ...]
    finish_reason: str | None
    metrics: GenerationMetrics
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: str
    metrics: GenerationMetrics
    runtime: dict[str, str] = field(default_factory=dict)  # backend and variant that ran it
    logprobs: list[TokenLogprob] = field(default_factory=list)  # with SamplingParams.logprobs


# Below this temperature sampling is greedy: dividing by it would overflow (vLLM's cut-off).
GREEDY_BELOW = 1e-5


def sample(logits: np.ndarray, params: SamplingParams, history: Sequence[int],
           rng: np.random.Generator | None) -> int:
    """Pick the next token from (vocab,) logits (numpy: no torch on the serving path)."""
    logits = np.asarray(logits, dtype=np.float32)
    if params.repetition_penalty != 1.0 and history:
        idx = np.unique(np.asarray(history, dtype=np.int64))
        seen = logits[idx]
        logits = logits.copy()
        logits[idx] = np.where(seen > 0, seen / params.repetition_penalty,
                               seen * params.repetition_penalty)
    if params.temperature < GREEDY_BELOW:
        return int(np.argmax(logits))
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
    p = np.exp(z - z.max())
    cdf = np.cumsum(p)
    r = (rng or np.random.default_rng()).random() * cdf[-1]
    return int(min(np.searchsorted(cdf, r, side="right"), z.size - 1))


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


class IncrementalDecoder:
    """Token ids to text without decoding the whole sequence at every step.

    Decoding token ``t`` alone can differ from decoding it in context (a leading space, a
    multi-byte character split over tokens), so each step decodes a short window twice, from
    the same start token: with and without the new tokens; the difference is the new text
    (vLLM's incremental detokenizer works this way). Cost per token: two decodes of a few
    tokens, instead of one of the whole sequence.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.text = ""
        self._prefix = 0  # window start (token index)
        self._read = 0  # tokens already turned into text

    def push(self, token: int) -> bool:
        """Add a token; True when ``text`` grew to a complete character boundary."""
        self.tokens.append(token)
        window = self.tokens[self._prefix:]
        before = self.tokenizer.decode(self.tokens[self._prefix:self._read])
        after = self.tokenizer.decode(window)
        if after.endswith("\ufffd") or len(after) <= len(before):
            return False
        self.text += after[len(before):]
        self._prefix, self._read = self._read, len(self.tokens)
        return True

    def flush(self) -> str:
        """The text of every token pushed, including an incomplete character at the end."""
        if self._read < len(self.tokens):
            before = self.tokenizer.decode(self.tokens[self._prefix:self._read])
            after = self.tokenizer.decode(self.tokens[self._prefix:])
            self.text += after[len(before):]
            self._prefix = self._read = len(self.tokens)
        return self.text


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters might still become a stop string."""
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                keep = max(keep, n)
                break
    return keep


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
    from edgeweave.runtime.sequence import Generation, advance

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
