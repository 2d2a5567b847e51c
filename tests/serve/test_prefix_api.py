"""The prefix cache as an OpenAI client sees it: ``usage.prompt_tokens_details.cached_tokens``
on chat and completions (whole and streamed), the same greedy text as a server without the
cache, and vLLM-style hit counters on ``/metrics``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edgeweave.models.checkpoint import load_folder
from edgeweave.runtime.prefix import MIN_TAIL
from edgeweave.serve.backend import LocalSessions
from edgeweave.serve.config import ServeConfig
from edgeweave.serve.server import BackgroundServer
from tests.conftest import TINY_WORDS, make_cfg, random_model, save_folder
from tests.serve.conftest import client
from tests.serve.test_metrics import scrape

MODEL = "tiny-llama"
GREEDY = {"temperature": 0, "max_tokens": 8, "extra_body": {"ignore_eos": True}}
# an instruction and demonstrations every request shares, then a question of its own
SYSTEM = " ".join(TINY_WORDS[:40] + TINY_WORDS[:30])
QUESTIONS = ["what is the kitchen temperature", "where is the battery gateway",
             "what is the kitchen temperature"]
CONFIG = ServeConfig(max_prompt_tokens=200, max_tokens_limit=16, default_max_tokens=8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return save_folder(random_model(make_cfg(), seed=11), tmp_path_factory.mktemp("m") / MODEL)


def _serve(folder, prefix_cache_bytes: int) -> Iterator[tuple[str, LocalSessions]]:  # type: ignore[no-untyped-def]
    sessions = LocalSessions.from_loaded(load_folder(folder),
                                         prefix_cache_bytes=prefix_cache_bytes)
    with BackgroundServer(sessions, CONFIG) as url:
        yield url, sessions


@pytest.fixture(scope="module")
def cached(folder) -> Iterator[tuple[str, LocalSessions]]:  # type: ignore[no-untyped-def]
    yield from _serve(folder, 8 << 20)


@pytest.fixture(scope="module")
def uncached(folder) -> Iterator[tuple[str, LocalSessions]]:  # type: ignore[no-untyped-def]
    yield from _serve(folder, 0)


def _chat(url: str) -> list[tuple[str, int, int]]:
    c = client(url, "none")
    out = []
    for q in QUESTIONS:
        r = c.chat.completions.create(model=MODEL, messages=[
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": q}], **GREEDY)
        out.append((r.choices[0].message.content, r.usage.prompt_tokens,
                    r.usage.prompt_tokens_details.cached_tokens))
    return out


def test_the_openai_client_reads_cached_tokens_and_the_text_is_unchanged(cached, uncached):
    (url, sessions), (cold_url, _) = cached, uncached
    tok = sessions.tokenizer
    ids = [tok.encode_chat([{"role": "system", "content": SYSTEM},
                            {"role": "user", "content": q}]) for q in QUESTIONS]
    shared = next(i for i, (a, b) in enumerate(zip(ids[0], ids[1], strict=False)) if a != b)
    assert shared > 16  # the system message spans whole blocks
    # Execute: chat, then completions streamed with usage, on both servers
    want, got = _chat(cold_url), _chat(url)
    c = client(url, "none")
    chunks = list(c.completions.create(model=MODEL, prompt=ids[1] + [40], stream=True,
                                       stream_options={"include_usage": True}, **GREEDY))
    # Assert: the same text; the first request computed everything, the second reused the
    # shared part, the repeat all but its last two tokens
    assert [t for t, _, _ in got] == [t for t, _, _ in want]
    assert [n for _, n, _ in got] == [len(i) for i in ids]
    assert [c for _, _, c in want] == [0, 0, 0]
    assert [c for _, _, c in got] == [0, shared, len(ids[2]) - MIN_TAIL]
    streamed = chunks[-1].usage
    assert streamed.prompt_tokens_details.cached_tokens == len(ids[1]) + 1 - MIN_TAIL
    final = next(ch for ch in chunks if ch.choices and ch.choices[0].finish_reason)
    assert final.model_extra["edgeweave"]["cached_tokens"] == len(ids[1]) + 1 - MIN_TAIL
    # /metrics: vLLM's convention, in tokens
    m = scrape(url)
    value = {k: v for _, samples in m.values() for k, v in samples.items()}
    hits = shared + len(ids[2]) - MIN_TAIL + len(ids[1]) + 1 - MIN_TAIL
    queried = sum(len(i) for i in ids) + len(ids[1]) + 1
    assert value["edgeweave_prefix_cache_hits_total"] == hits
    assert value["edgeweave_prefix_cache_queries_total"] == queried
    assert value["edgeweave_prefix_cache_hit_rate"] == pytest.approx(hits / queried)
    assert value["edgeweave_prefix_cache_usage_bytes"] == sessions.prefixes.usage().nbytes > 0
    # the donors are not open sessions: the KV figure counts only those
    assert value["edgeweave_kv_cache_usage_bytes"] == 0
    cold = {k: v for _, samples in scrape(cold_url).values() for k, v in samples.items()}
    assert cold["edgeweave_prefix_cache_queries_total"] == 0
    assert cold["edgeweave_prefix_cache_usage_bytes"] == 0


def test_a_served_pipeline_reuses_prefixes_at_every_stage(folder, uncached):
    from edgeweave.runtime.launch import embedded
    from edgeweave.serve.backend import CoordinatorSessions
    from edgeweave.types import Plan

    dep = embedded(str(folder), Plan.split(4, [1, 3], ["d0", "d1", "d2"]),
                   loaded=load_folder(folder), max_len=256, backend="torch",
                   prefix_cache_bytes=8 << 20)
    coord = dep.coordinator
    sessions = CoordinatorSessions(coord, dep.tokenizer, model_id=MODEL)
    try:
        with BackgroundServer(sessions, CONFIG) as url:
            got = _chat(url)
            m = {k: v for _, samples in scrape(url).values() for k, v in samples.items()}
    finally:
        sessions.close()
    want = _chat(uncached[0])
    assert [t for t, _, _ in got] == [t for t, _, _ in want]
    cached = [c for _, _, c in got]
    assert cached[0] == 0 and cached[1] > 16 and cached[2] == got[2][1] - MIN_TAIL
    assert m["edgeweave_prefix_cache_hits_total"] == sum(cached)
    assert m["edgeweave_prefix_cache_usage_bytes"] > 0
