"""Speculative decoding behind the HTTP API: streamed greedy text is the plain server's, the
response says what the draft did, concurrent requests each get their own draft session
(and step in one batch while several need the verifier)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from edgeweave.runtime.engines.base import EngineConfig
from edgeweave.runtime.engines.torch import TorchStageEngine
from edgeweave.runtime.speculative import SpeculationConfig
from edgeweave.serve.backend import SpeculativeSessions
from edgeweave.serve.config import ServeConfig
from edgeweave.serve.server import BackgroundServer
from edgeweave.types import Shard
from tests.conftest import make_cfg, random_model
from tests.serve.conftest import client
from tests.serve.test_openai_api import GREEDY, solo


@pytest.fixture(scope="module")
def spec_server(tiny_sessions):
    # the draft: the first 2 of the 4 blocks of another random model (most proposals fail,
    # so rewinds happen in every request) in this process
    draft = TorchStageEngine(EngineConfig("draft", Shard(0, 2, 2)),
                             model=random_model(make_cfg(num_layers=2), seed=3))
    sessions = SpeculativeSessions(tiny_sessions, draft, "tiny-draft", SpeculationConfig(k=3))
    with BackgroundServer(sessions, ServeConfig(max_concurrent=8)) as url:
        yield url


def _stream(url: str, prompt: str, n: int = 16) -> tuple[str, dict]:
    chunks = list(client(url, "x").chat.completions.create(
        model=client(url, "x").models.list().data[0].id,
        messages=[{"role": "user", "content": prompt}], max_tokens=n, stream=True, **GREEDY))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    return text, final.model_extra["edgeweave"]


def test_streamed_greedy_text_is_the_plain_servers(spec_server, tiny_sessions):
    prompts = ["the kitchen door", "hello device", "battery low on the gateway"]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda p: (p, *_stream(spec_server, p)), prompts))
    for p, text, ew in results:
        assert text == solo(tiny_sessions, [{"role": "user", "content": p}], 16).text
        # alone a stream speculates; while others need the verifier too it steps in a batch
        assert ew["spec_rounds"] + ew["spec_batched_steps"] >= 1
        assert 0 <= ew["spec_acceptance"] <= 1
        assert ew["spec_k"] == 3


def test_health_names_the_draft(spec_server):
    health = httpx.get(f"{spec_server}/health").json()
    assert health["draft"] == "tiny-draft" and health["draft_k"] == "3"


def test_the_draft_works_ahead_only_where_the_verifier_is_another_machine():
    from types import SimpleNamespace

    from edgeweave.serve.backend import verifier_elsewhere
    from edgeweave.types import Plan

    def coord(*addresses: str, parallel: bool = True):  # the coordinator's two seams
        plan = Plan.split(4, [2][:len(addresses) - 1], [f"n{i}" for i in range(len(addresses))])
        links = {f"n{i}": SimpleNamespace(address=a, parallel=parallel)
                 for i, a in enumerate(addresses)}
        return SimpleNamespace(plan=plan, link=links.__getitem__)

    assert verifier_elsewhere(None) is False  # one process
    assert verifier_elsewhere(coord("127.0.0.1:5000", "[::1]:5001")) is False  # this host
    assert verifier_elsewhere(coord("127.0.0.1:5000", "10.0.0.7:5000")) is True
    assert verifier_elsewhere(coord("edge.local:5000")) is True
    assert verifier_elsewhere(coord("mem", parallel=False)) is False  # in-process stages
