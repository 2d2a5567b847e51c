"""The server over a coordinator session factory: a 3-stage embedded plan behind HTTP."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from edgeweave.models.checkpoint import load_folder
from edgeweave.runtime.launch import embedded
from edgeweave.serve.backend import CoordinatorSessions
from edgeweave.serve.config import ServeConfig
from edgeweave.serve.server import BackgroundServer
from edgeweave.types import Plan
from tests.serve.conftest import client
from tests.serve.test_openai_api import GREEDY, solo


@pytest.fixture(scope="module")
def coordinator_server(tiny_sessions):
    folder = tiny_sessions.engine.config.model  # from_loaded keys the engine by its folder
    dep = embedded(folder, Plan.split(4, [1, 3], ["d0", "d1", "d2"]),
                   loaded=load_folder(folder), max_len=256, backend="torch")
    coord = dep.coordinator
    sessions = CoordinatorSessions(coord, dep.tokenizer, model_id="tiny-pipeline")
    with BackgroundServer(sessions, ServeConfig(max_concurrent=8)) as url:
        yield url, coord
    sessions.close()


def test_pipeline_streams_match_the_single_process_model(coordinator_server, tiny_sessions):
    url, coord = coordinator_server
    prompts = ["the kitchen door", "hello device", "battery low on the gateway"]

    def one(p):
        chunks = list(client(url, "x").chat.completions.create(
            model="tiny-pipeline", messages=[{"role": "user", "content": p}], max_tokens=16,
            stream=True, **GREEDY))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
        return p, text, final.model_extra["edgeweave"]

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(one, prompts))
    for p, text, ew in results:
        assert text == solo(tiny_sessions, [{"role": "user", "content": p}], 16).text
        assert ew["bytes_on_wire"] > 0 and ew["hops"] > 0 and "hop_overhead_ms" in ew
    assert coord._sessions == {}  # every finished request closed its coordinator session
    health = httpx.get(f"{url}/health").json()
    assert [s["device"] for s in health["plan"]] == ["d0", "d1", "d2"]
    assert health["failed_devices"] == [] and health["failovers"] == 0


def test_failover_in_the_middle_of_a_served_batch_keeps_every_stream_exact(tiny_sessions):
    """Four streams in one batch through a 3-stage plan; a node is marked failed while they
    run (between two batched rounds): every text still equals the single-process model."""
    import threading

    folder = tiny_sessions.engine.config.model
    dep = embedded(folder, Plan.split(4, [1, 3], ["d0", "d1", "d2"]),
                   loaded=load_folder(folder), max_len=256, backend="torch")
    coord = dep.coordinator
    sessions = CoordinatorSessions(coord, dep.tokenizer, model_id="tiny-pipeline")
    prompts = ["the kitchen door", "hello device", "battery low on the gateway", "what is"]
    first = threading.Barrier(len(prompts) + 1, timeout=60)
    try:
        with BackgroundServer(sessions, ServeConfig(max_concurrent=8)) as url:
            def one(p):  # type: ignore[no-untyped-def]
                stream = client(url, "x").chat.completions.create(
                    model="tiny-pipeline", messages=[{"role": "user", "content": p}],
                    max_tokens=120, stream=True, **GREEDY)
                text, waited, ew = "", False, {}
                for c in stream:
                    if c.choices and c.choices[0].finish_reason:
                        ew = c.model_extra["edgeweave"]
                    if c.choices and c.choices[0].delta.content:
                        text += c.choices[0].delta.content
                        if not waited:
                            first.wait()  # every stream is running before the failure
                            waited = True
                if not waited:
                    first.wait()
                return text, ew

            with ThreadPoolExecutor(len(prompts)) as pool:
                futures = [pool.submit(one, p) for p in prompts]
                first.wait()
                coord.mark_failed("d1")
                results = [f.result() for f in futures]
        for p, (text, _) in zip(prompts, results, strict=True):
            assert text == solo(tiny_sessions, [{"role": "user", "content": p}], 120).text
        # the failure hit running sessions (replayed), not only finished ones
        assert sum(ew["failovers"] for _, ew in results) >= 1
        assert [st.device for st in coord.plan.stages] == ["d0", "d0", "d2"]
        assert coord.stats["failovers"] == 1
    finally:
        sessions.close()
