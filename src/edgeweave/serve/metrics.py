"""Prometheus metrics of one server (own registry, so several apps can live in one process)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgeweave.runtime.generate import GenerationMetrics

# Decode on an edge CPU spans ~5-200 ms per token; first tokens up to seconds with queueing.
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class ServeMetrics:
    def __init__(self, active: Callable[[], int]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("edgeweave_http_requests", "HTTP requests by path and status",
                                ["path", "status"], registry=r)
        self.completions = Counter("edgeweave_completions", "Finished generations by outcome",
                                   ["endpoint", "finish_reason"], registry=r)
        self.prompt_tokens = Counter("edgeweave_prompt_tokens", "Prompt tokens processed",
                                     registry=r)
        self.generated_tokens = Counter("edgeweave_generated_tokens", "Tokens generated",
                                        registry=r)
        self.ttft = Histogram("edgeweave_time_to_first_token_seconds",
                              "From request arrival (queueing included) to the first token",
                              buckets=_TTFT_BUCKETS, registry=r)
        self.tpot = Histogram("edgeweave_time_per_output_token_seconds",
                              "Mean time per generated token after the first, per request",
                              buckets=_TPOT_BUCKETS, registry=r)
        self.queue = Histogram("edgeweave_queue_seconds", "Wait before a session started",
                               buckets=_TTFT_BUCKETS, registry=r)
        active_g = Gauge("edgeweave_active_sessions", "Sessions being generated", registry=r)
        active_g.set_function(lambda: float(active()))

    def observe(self, endpoint: str, finish_reason: str, m: GenerationMetrics,
                queue_s: float) -> None:
        self.completions.labels(endpoint, finish_reason).inc()
        self.prompt_tokens.inc(m.prompt_tokens)
        self.generated_tokens.inc(m.generated_tokens)
        self.queue.observe(queue_s)
        if m.generated_tokens:
            self.ttft.observe(queue_s + m.ttft_s)
        tpot = time_per_output_token(m)
        if tpot is not None:
            self.tpot.observe(tpot)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def time_per_output_token(m: GenerationMetrics) -> float | None:
    if m.generated_tokens < 2:
        return None
    return (m.total_s - m.ttft_s) / (m.generated_tokens - 1)


def response_metrics(m: GenerationMetrics, queue_s: float) -> dict[str, Any]:
    """The ``edgeweave`` field every completion carries: its own timings and engine stats."""
    tpot = time_per_output_token(m)
    out: dict[str, Any] = {
        "ttft_s": round(queue_s + m.ttft_s, 6),  # what the client waited for
        "queue_s": round(queue_s, 6),
        "engine_ttft_s": round(m.ttft_s, 6),
        "prefill_tok_s": round(m.prefill_tps, 2),
        "decode_tok_s": round(m.decode_tps, 2),
        "tpot_s": None if tpot is None else round(tpot, 6),
        "total_s": round(queue_s + m.total_s, 6),
        "peak_rss_mb": round(m.peak_rss_mb, 1),
    }
    # engine stats, e.g. bytes on the wire of a distributed plan (0 for one process)
    out.update(m.extra)
    wire = m.extra.get("bytes_sent", 0.0) + m.extra.get("bytes_received", 0.0)
    out.setdefault("bytes_on_wire", int(wire))
    return out
