"""A batch-invariant server (``serve --batch-invariant``) on a tiny int4 ONNX model: greedy
text of concurrent requests equals each request's text when it runs alone, through the
official ``openai`` client, long prompts (cut in chunks) and prompts the prefix cache holds
(the concurrent rounds repeat the lone ones) included; ``/health`` and every response say
the mode is on."""

from __future__ import annotations

import concurrent.futures

import httpx
import pytest

from edgeweave.runtime.engines.base import EngineConfig
from edgeweave.serve.backend import LocalSessions
from edgeweave.serve.config import ServeConfig
from edgeweave.serve.server import BackgroundServer
from edgeweave.types import Shard
from tests.conftest import make_cfg, random_model
from tests.serve.conftest import API_KEY, client

pytest.importorskip("onnxruntime")
compress = pytest.importorskip("edgeweave.compress")

PROMPTS = ["hello there", "the cat sat on the mat " * 12, "a b c d e f g", "sensor 17.5 C",
           "window open, heating on " * 6, "ok"]


@pytest.fixture(scope="module")
def invariant_server(tiny_sessions, tmp_path_factory):  # type: ignore[no-untyped-def]
    from edgeweave.runtime.engines.onnx import SessionProfile, engine_from_model
    from edgeweave.runtime.engines.onnx_export import ExportSpec

    model = compress.compress(random_model(make_cfg()), compress.RTN(bits=4, group_size=32)).model
    n = model.cfg.num_layers
    cfg = EngineConfig("tiny", Shard(0, n, n), "int4", backend="onnx", threads=1,
                       batch_invariant=True)
    spec = ExportSpec(0, n, weights="int4", max_len=model.cfg.max_position)
    engine = engine_from_model(model, cfg, tmp_path_factory.mktemp("bi"), spec,
                               SessionProfile(threads=1))
    sessions = LocalSessions(engine, tiny_sessions.tokenizer, "tiny-int4")  # prefix cache on
    conf = ServeConfig(api_keys=(API_KEY,), max_prompt_tokens=200, max_tokens_limit=64,
                       default_max_tokens=16, max_concurrent=16)
    with BackgroundServer(sessions, conf) as url:
        yield url


def _complete(url: str, prompt: str) -> tuple[str, dict]:
    r = client(url).completions.create(model="tiny-int4", prompt=prompt, max_tokens=24,
                                       temperature=0, extra_body={"ignore_eos": True})
    return r.choices[0].text, r.model_extra["edgeweave"]


def test_concurrent_greedy_text_equals_each_request_alone(invariant_server):
    alone = [_complete(invariant_server, p)[0] for p in PROMPTS]
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS) * 2) as pool:
        together = list(pool.map(lambda p: _complete(invariant_server, p)[0], PROMPTS * 2))
    assert together == alone * 2
    assert len(set(alone)) > 1  # the prompts lead somewhere different


def test_the_mode_is_reported(invariant_server):
    health = httpx.get(f"{invariant_server}/health", timeout=10).json()
    assert health["batch_invariant"] == "true" and health["backend"] == "onnx"
    assert _complete(invariant_server, "hi")[1]["batch_invariant"] == "true"
