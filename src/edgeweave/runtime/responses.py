"""What generation hands back: every streamed response and the final result carry their
own metrics (TTFT, prompt and generation tok/s, peak memory), so benchmarks read them instead
of re-timing (mlx_lm's ``GenerationResponse``).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field

from edgeweave.runtime.logprobs import TokenLogprob


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
