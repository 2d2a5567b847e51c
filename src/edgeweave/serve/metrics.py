"""Prometheus metrics of one server (own registry, so several apps can live in one process).

Names follow vLLM's where a vLLM user would look for them, with our ``edgeweave_`` prefix in
place of ``vllm:`` (Prometheus adds ``_total`` to counters, as it does for vLLM's):

==========================================  =============================================
edgeweave_                                  vLLM
==========================================  =============================================
time_to_first_token_seconds                 vllm:time_to_first_token_seconds
inter_token_latency_seconds                 vllm:inter_token_latency_seconds
time_per_output_token_seconds (per request) vllm:request_time_per_output_token_seconds
e2e_request_latency_seconds                 vllm:e2e_request_latency_seconds
queue_seconds                               vllm:request_queue_time_seconds
prompt_tokens_total                         vllm:prompt_tokens_total
generated_tokens_total                      vllm:generation_tokens_total
num_requests_running / _waiting             vllm:num_requests_running / _waiting
batch_size (sessions per engine step)       vllm:iteration_tokens_total (tokens per step)
kv_cache_usage_bytes / _capacity_bytes      (vLLM counts blocks, not bytes)
kv_cache_usage_perc (only with a cap)       vllm:kv_cache_usage_perc
prefix_cache_queries_total / _hits_total    vllm:prefix_cache_queries / _hits (tokens)
prefix_cache_hit_rate, _usage_bytes         (derived; llama-server has no equivalent)
==========================================  =============================================

Cache figures are pulled from the backend's ``cache_usage()`` at every scrape (see
:class:`~edgeweave.serve.backend.CacheUsage`); the batch size is pushed by whoever steps the
engine (:meth:`ServeMetrics.observe_batch`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from edgeweave.runtime.generate import GenerationMetrics
from edgeweave.serve.backend import CacheUsage

# Decode on an edge CPU spans ~5-200 ms per token; first tokens up to seconds with queueing.
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class _CacheCollector:
    """Reads the backend's cache figures when Prometheus scrapes (nothing per token)."""

    def __init__(self, usage: Callable[[], CacheUsage]) -> None:
        self.usage = usage

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        u = self.usage()
        yield GaugeMetricFamily("edgeweave_kv_cache_usage_bytes",
                                "Bytes reserved by the KV caches of open sessions",
                                value=u.kv_bytes)
        if u.kv_capacity_bytes:
            yield GaugeMetricFamily("edgeweave_kv_cache_capacity_bytes",
                                    "The memory cap the KV caches live under",
                                    value=u.kv_capacity_bytes)
            yield GaugeMetricFamily("edgeweave_kv_cache_usage_perc",
                                    "KV cache bytes over the cap (0-1)",
                                    value=u.kv_bytes / u.kv_capacity_bytes)
        yield GaugeMetricFamily("edgeweave_prefix_cache_usage_bytes",
                                "Bytes held by the prefix KV cache", value=u.prefix_bytes)
        yield CounterMetricFamily("edgeweave_prefix_cache_queries",
                                  "Prompt tokens looked up in the prefix cache",
                                  value=u.prefix_queried_tokens)
        yield CounterMetricFamily("edgeweave_prefix_cache_hits",
                                  "Prompt tokens found in the prefix cache",
                                  value=u.prefix_hit_tokens)
        rate = u.prefix_hit_tokens / u.prefix_queried_tokens if u.prefix_queried_tokens else 0.0
        yield GaugeMetricFamily("edgeweave_prefix_cache_hit_rate",
                                "Prefix-cache hits over queries in tokens, since start (0-1)",
                                value=rate)


class ServeMetrics:
    """``active``: sessions the scheduler holds; ``load``: (running, waiting) requests;
    ``usage``: the backend's caches."""

    def __init__(self, active: Callable[[], int],
                 load: Callable[[], tuple[int, int]] | None = None,
                 usage: Callable[[], CacheUsage] | None = None) -> None:
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
        self.itl = Histogram("edgeweave_inter_token_latency_seconds",
                             "Time between consecutive generated tokens (a streamed piece of "
                             "several tokens spreads its time evenly over them)",
                             buckets=_TPOT_BUCKETS, registry=r)
        self.tpot = Histogram("edgeweave_time_per_output_token_seconds",
                              "Mean time per generated token after the first, per request",
                              buckets=_TPOT_BUCKETS, registry=r)
        self.e2e = Histogram("edgeweave_e2e_request_latency_seconds",
                             "From request arrival to its last token", buckets=_E2E_BUCKETS,
                             registry=r)
        self.queue = Histogram("edgeweave_queue_seconds", "Wait before a session started",
                               buckets=_TTFT_BUCKETS, registry=r)
        self.batch = Histogram("edgeweave_batch_size",
                               "Sessions advanced together by one engine step",
                               buckets=_BATCH_BUCKETS, registry=r)
        self.embedding_inputs = Counter("edgeweave_embedding_inputs", "Texts embedded",
                                        registry=r)
        self.embedding_tokens = Counter("edgeweave_embedding_tokens",
                                        "Tokens read by the embedding model", registry=r)
        self.embedding_seconds = Histogram("edgeweave_embedding_request_seconds",
                                           "Model time of one embeddings request",
                                           buckets=_TTFT_BUCKETS, registry=r)
        active_g = Gauge("edgeweave_active_sessions", "Sessions being generated", registry=r)
        active_g.set_function(lambda: float(active()))
        load_fn = load or (lambda: (active(), 0))
        Gauge("edgeweave_num_requests_running", "Requests with a session, being generated",
              registry=r).set_function(lambda: float(load_fn()[0]))
        Gauge("edgeweave_num_requests_waiting", "Requests accepted, waiting for a session",
              registry=r).set_function(lambda: float(load_fn()[1]))
        r.register(_CacheCollector(usage or CacheUsage))  # type: ignore[arg-type]

    def observe(self, endpoint: str, finish_reason: str, m: GenerationMetrics,
                queue_s: float) -> None:
        self.completions.labels(endpoint, finish_reason).inc()
        self.prompt_tokens.inc(m.prompt_tokens)
        self.generated_tokens.inc(m.generated_tokens)
        self.queue.observe(queue_s)
        self.e2e.observe(queue_s + m.total_s)
        if m.generated_tokens:
            self.ttft.observe(queue_s + m.ttft_s)
        tpot = time_per_output_token(m)
        if tpot is not None:
            self.tpot.observe(tpot)

    def observe_batch(self, sessions: int, times: int = 1) -> None:
        """``times`` engine steps that each advanced ``sessions`` sessions together (the
        scheduler calls it once per batched round)."""
        for _ in range(times):
            self.batch.observe(sessions)

    def observe_embeddings(self, inputs: int, tokens: int, seconds: float) -> None:
        self.embedding_inputs.inc(inputs)
        self.embedding_tokens.inc(tokens)
        self.embedding_seconds.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class TokenClock:
    """Inter-token latency of one request from the metrics each streamed piece carries.

    A piece can hold several tokens (text held back for a partial character or a stop-string
    prefix); its time since the previous piece is spread evenly over its tokens. The first
    token's wait is the TTFT, not a gap: a request of ``n`` tokens gives ``n - 1`` gaps that
    add up to its decode time."""

    def __init__(self, metrics: ServeMetrics) -> None:
        self.metrics = metrics
        self.t = 0.0  # engine time of the last token counted
        self.tokens = 0

    def tick(self, m: GenerationMetrics) -> None:
        if m.generated_tokens == 0:
            return
        if self.tokens == 0:
            self.t, self.tokens = m.ttft_s, 1
        n = m.generated_tokens - self.tokens
        if n > 0:
            gap = max(m.total_s - self.t, 0.0) / n
            for _ in range(n):
                self.metrics.itl.observe(gap)
        self.t, self.tokens = m.total_s, m.generated_tokens


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
        "cached_tokens": m.cached_tokens,  # prompt tokens the prefix cache supplied
    }
    # engine stats, e.g. bytes on the wire of a distributed plan (0 for one process)
    out.update(m.extra)
    wire = m.extra.get("bytes_sent", 0.0) + m.extra.get("bytes_received", 0.0)
    out.setdefault("bytes_on_wire", int(wire))
    return out
