"""Concurrency cap over HTTP: 429 while the slot is held, freed when the client goes away."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from edgeweave.serve.config import ServeConfig
from edgeweave.serve.server import BackgroundServer
from tests.serve.conftest import client

MODEL = "tiny-llama"


def test_one_slot_gives_429_then_frees_when_the_stream_is_dropped(tiny_sessions):
    cfg = ServeConfig(max_concurrent=1, max_tokens_limit=200)  # no keys: open on loopback
    with BackgroundServer(tiny_sessions, cfg) as url:
        c = client(url, key="unused")
        long = c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=200,
            temperature=0, stream=True, extra_body={"ignore_eos": True})
        it = iter(long)
        next(it), next(it)  # role chunk, then the first generated text: the slot is busy
        with pytest.raises(openai.RateLimitError) as e:
            c.completions.create(model=MODEL, prompt="hello", max_tokens=2)
        assert e.value.status_code == 429 and e.value.code == "rate_limit_exceeded"
        assert "1 session slots are busy" in e.value.message

        long.close()  # the client walks away mid-stream: the server must cancel the session
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/health").json()["active_sessions"] and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"{url}/health").json()["active_sessions"] == 0
        r = c.completions.create(model=MODEL, prompt="hello", max_tokens=3, temperature=0,
                                 extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 3
        text = httpx.get(f"{url}/metrics").text
        # only the second completion finished; the dropped one was cut, never completed
        assert 'edgeweave_completions_total{endpoint="completions",finish_reason="length"} 1.0' \
            in text
        assert "edgeweave_completions_total{endpoint=\"chat\"" not in text
