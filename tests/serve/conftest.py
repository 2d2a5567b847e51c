"""A real uvicorn server on 127.0.0.1 serving a tiny random-weight model, and clients for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edgeweave.models.checkpoint import load_folder
from edgeweave.serve.backend import LocalSessions
from edgeweave.serve.config import ServeConfig
from edgeweave.serve.server import BackgroundServer
from tests.conftest import make_cfg, random_model, save_folder

API_KEY = "sk-edgeweave-test"


@pytest.fixture(scope="module")
def tiny_sessions(tmp_path_factory: pytest.TempPathFactory) -> LocalSessions:
    folder = save_folder(random_model(make_cfg()), tmp_path_factory.mktemp("m") / "tiny-llama")
    return LocalSessions.from_loaded(load_folder(folder))


@pytest.fixture(scope="module")
def server(tiny_sessions: LocalSessions) -> Iterator[str]:
    cfg = ServeConfig(api_keys=(API_KEY,), max_prompt_tokens=64, max_tokens_limit=100,
                      default_max_tokens=16, max_concurrent=32)
    with BackgroundServer(tiny_sessions, cfg) as url:
        yield url


def client(url: str, key: str = API_KEY):  # type: ignore[no-untyped-def]
    import openai

    # no retries: a 429 or 401 must reach the test, not be retried away
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)
