"""/metrics after real requests, read back with prometheus_client's own parser."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeweave.serve.backend import CacheUsage, LocalSessions
from edgeweave.serve.config import ServeConfig
from edgeweave.serve.server import BackgroundServer
from tests.serve.conftest import client

MODEL = "tiny-llama"
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}


def scrape(url: str) -> dict[str, tuple[str, dict[str, float]]]:
    """family name -> (type, {sample name with labels: value})."""
    text = httpx.get(f"{url}/metrics").text
    out = {}
    for fam in text_string_to_metric_families(text):
        samples = {s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items())): s.value
                   for s in fam.samples}
        out[fam.name] = (fam.type, samples)
    return out


@pytest.fixture(scope="module")
def fresh(tiny_sessions: LocalSessions) -> Iterator[str]:  # counts start at zero
    with BackgroundServer(tiny_sessions, ServeConfig(max_tokens_limit=64, default_max_tokens=16)) as url:
        yield url


def test_a_prometheus_parser_reads_vllm_style_families_that_add_up(fresh):
    c = client(fresh, "none")
    usages = []
    for n in (5, 7):
        usages.append(c.completions.create(model=MODEL, prompt="the sensor reads", max_tokens=n,
                                           **GREEDY).usage)
    chunks = list(c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello world"}], max_tokens=6,
        stream=True, stream_options={"include_usage": True}, **GREEDY))
    usages.append(chunks[-1].usage)
    c.embeddings.create(model="all-MiniLM-L6-v2", input=["one text", "two texts"])

    m = scrape(fresh)
    want_types = {
        "edgeweave_time_to_first_token_seconds": "histogram",
        "edgeweave_inter_token_latency_seconds": "histogram",
        "edgeweave_time_per_output_token_seconds": "histogram",
        "edgeweave_e2e_request_latency_seconds": "histogram",
        "edgeweave_batch_size": "histogram",
        "edgeweave_prompt_tokens": "counter",
        "edgeweave_generated_tokens": "counter",
        "edgeweave_num_requests_running": "gauge",
        "edgeweave_num_requests_waiting": "gauge",
        "edgeweave_kv_cache_usage_bytes": "gauge",
        "edgeweave_prefix_cache_queries": "counter",
        "edgeweave_prefix_cache_hits": "counter",
        "edgeweave_prefix_cache_hit_rate": "gauge",
        "edgeweave_prefix_cache_usage_bytes": "gauge",
        "edgeweave_embedding_inputs": "counter",
    }
    assert {k: m[k][0] for k in want_types} == want_types
    value = {k: v for _, samples in m.values() for k, v in samples.items()}
    generated = sum(u.completion_tokens for u in usages)
    assert generated == 18
    assert value["edgeweave_prompt_tokens_total"] == sum(u.prompt_tokens for u in usages)
    assert value["edgeweave_generated_tokens_total"] == generated
    assert value["edgeweave_time_to_first_token_seconds_count"] == 3
    assert value["edgeweave_e2e_request_latency_seconds_count"] == 3
    # requests one after another: one scheduler round per token (the prefill round yields
    # the first), one session in each
    assert value["edgeweave_batch_size_count"] == generated
    assert value["edgeweave_batch_size_sum"] == generated
    # a gap before every token but each request's first
    assert value["edgeweave_inter_token_latency_seconds_count"] == generated - 3
    assert value["edgeweave_inter_token_latency_seconds_sum"] > 0
    assert value["edgeweave_embedding_inputs_total"] == 2
    # nothing is running any more, and every session's cache was released
    assert value["edgeweave_num_requests_running"] == 0
    assert value["edgeweave_num_requests_waiting"] == 0
    assert value["edgeweave_kv_cache_usage_bytes"] == 0
    # every prompt was looked up in the prefix cache; none is a whole block (16 tokens)
    # long, so nothing was kept or found (tests/serve/test_prefix_api.py has the hits)
    assert value["edgeweave_prefix_cache_queries_total"] == sum(u.prompt_tokens for u in usages)
    assert value["edgeweave_prefix_cache_hits_total"] == 0
    assert value["edgeweave_prefix_cache_hit_rate"] == 0
    assert value["edgeweave_prefix_cache_usage_bytes"] == 0
    assert all(u.prompt_tokens_details.cached_tokens == 0 for u in usages)
    assert "edgeweave_kv_cache_usage_perc" not in m  # no memory cap in one process


def test_local_sessions_report_the_kv_bytes_of_open_sessions(tiny_sessions):
    before = tiny_sessions.cache_usage().kv_bytes
    a, b = tiny_sessions.new_session(32), tiny_sessions.new_session(64)
    try:
        eng = tiny_sessions.engine
        used = tiny_sessions.cache_usage()
        assert used.kv_bytes - before == eng.session_bytes(a.id) + eng.session_bytes(b.id) > 0
        assert used.kv_capacity_bytes is None
    finally:
        a.close()
        b.close()
    assert tiny_sessions.cache_usage().kv_bytes == before


class _WithCaches(LocalSessions):
    """A backend that reports a memory cap and a prefix cache, as one that has them will."""

    def cache_usage(self) -> CacheUsage:
        return CacheUsage(kv_bytes=3 << 20, kv_capacity_bytes=12 << 20, prefix_bytes=1 << 20,
                          prefix_queried_tokens=400, prefix_hit_tokens=300)


def test_a_backends_cache_usage_becomes_usage_and_hit_rate_gauges(tiny_sessions):
    backend = _WithCaches(tiny_sessions.engine, tiny_sessions.tokenizer, MODEL)
    with BackgroundServer(backend, ServeConfig()) as url:
        value = {k: v for _, samples in scrape(url).values() for k, v in samples.items()}
    assert value["edgeweave_kv_cache_usage_perc"] == 0.25
    assert value["edgeweave_kv_cache_capacity_bytes"] == 12 << 20
    assert value["edgeweave_prefix_cache_hits_total"] == 300
    assert value["edgeweave_prefix_cache_queries_total"] == 400
    assert value["edgeweave_prefix_cache_hit_rate"] == 0.75
    assert value["edgeweave_prefix_cache_usage_bytes"] == 1 << 20
