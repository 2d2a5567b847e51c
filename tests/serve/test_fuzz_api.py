"""Property: whatever JSON a client posts, the answer is a 200 or a 4xx in OpenAI's error
shape, never a 5xx (nor a server error hidden in a 200 stream).

Bodies are arbitrary JSON values and mutations of valid chat and completion bodies: wrong
types, huge numbers, lone surrogates, nested junk, unknown keys. They go through the ASGI
app itself (FastAPI's TestClient: the real app and scheduler, no sockets), so that 150 of
them take seconds; the connection-level guarantees are tested over uvicorn elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeweave.serve.app import create_app
from edgeweave.serve.config import ServeConfig
from tests.conftest import TINY_WORDS

MODEL = "tiny-llama"
PATHS = ("/v1/chat/completions", "/v1/completions")

# words the tiny model knows (prompts that get through to generation), any text, and text
# with lone surrogates mixed in (hypothesis leaves those out of st.text)
surrogate = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
words = st.lists(st.sampled_from(TINY_WORDS), min_size=1, max_size=6).map(" ".join)
texts = st.one_of(words, words, st.text(max_size=20),  # twice: one_of draws its branches alike
                  st.lists(st.one_of(st.characters(), surrogate), max_size=8).map("".join))
huge = st.sampled_from([10**30, -(10**30), 2**63, 2**64, -(2**63) - 1, 1e308, -1e308, 1e-320,
                        float("inf"), float("-inf"), float("nan")])
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), huge, texts)
json_values = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                     st.dictionaries(texts, inner, max_size=4)),
    max_leaves=12)

FIELDS = ("model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature",
          "top_p", "top_k", "n", "stream", "stream_options", "stop", "seed", "presence_penalty",
          "frequency_penalty", "repetition_penalty", "ignore_eos", "logprobs", "top_logprobs",
          "tools", "tool_choice", "response_format", "logit_bias", "user", "echo", "suffix",
          "best_of")
# values a well-meaning client might send for any field: the right type, sometimes
plausible = st.one_of(st.integers(-3, 300), st.floats(-3, 3), st.booleans(),
                      st.sampled_from([MODEL, "hello", "", [], {}, [1, 2], ["a"], None]))

chat = st.fixed_dictionaries({
    "model": st.just(MODEL),
    "messages": st.lists(st.fixed_dictionaries({
        "role": st.sampled_from(["system", "developer", "user", "assistant", "tool"]),
        "content": st.one_of(texts, st.none(), st.lists(st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "image_url"]), "text": texts}), max_size=2))}),
        min_size=1, max_size=3),
    "max_tokens": st.integers(1, 4),
}, optional={"temperature": st.floats(0, 2), "stream": st.booleans(),
             "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
             "seed": st.integers(0, 2**63 - 1), "top_p": st.floats(0, 1),
             "top_k": st.integers(0, 50), "stop": st.lists(texts, max_size=5)})
completion = st.fixed_dictionaries({
    "model": st.just(MODEL),
    "prompt": st.one_of(texts, st.lists(st.integers(-5, 200), max_size=5),
                        st.lists(texts, max_size=2)),
    "max_tokens": st.integers(1, 4),
}, optional={"temperature": st.floats(0, 2), "stream": st.booleans(),
             "echo": st.booleans(), "ignore_eos": st.booleans(),
             "repetition_penalty": st.floats(0, 3)})


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, Any]:
    """(path, body): a mutated valid body, mostly to its own endpoint, or any JSON value."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.sampled_from(PATHS)), draw(json_values)
    is_chat = draw(st.booleans())
    body: dict[str, Any] = dict(draw(chat if is_chat else completion))
    path = PATHS[0 if is_chat else 1]
    if draw(st.integers(0, 9)) == 0:
        path = PATHS[1 if is_chat else 0]
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        how = draw(st.sampled_from(["set", "junk", "drop", "unknown", "message"]))
        key = draw(st.sampled_from(FIELDS))
        if how == "set":
            body[key] = draw(plausible)
        elif how == "junk":
            body[key] = draw(st.one_of(json_values, huge))
        elif how == "drop":
            body.pop(key, None)
        elif how == "unknown":
            body[draw(texts)] = draw(json_values)
        elif isinstance(body.get("messages"), list) and body["messages"]:
            body["messages"][0] = draw(st.one_of(json_values, st.dictionaries(
                st.sampled_from(["role", "content", "name", "tool_calls"]), json_values)))
    return path, body


@pytest.fixture(scope="module")
def api(tiny_sessions) -> Iterator[TestClient]:
    # small limits keep every accepted request cheap: at most 8 tokens from a tiny model
    cfg = ServeConfig(max_prompt_tokens=64, max_tokens_limit=8, default_max_tokens=4,
                      max_body_bytes=64 * 1024)
    with TestClient(create_app(tiny_sessions, cfg)) as client:
        yield client


@settings(max_examples=150, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(request=requests())
def test_any_json_body_is_answered_200_or_a_4xx_in_openai_shape(api, request):
    path, body = request
    # json.dumps writes NaN/Infinity and escapes lone surrogates as \udxxx, as clients do
    r = api.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, r.text)
    if r.status_code != 200:
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}, err
        assert isinstance(err["message"], str) and err["message"]
        assert err["type"] != "server_error", err
    elif r.headers["content-type"].startswith("text/event-stream"):
        events = [line.removeprefix("data: ") for line in r.text.splitlines()
                  if line.startswith("data: ")]
        assert events[-1] == "[DONE]", r.text
        for ev in events[:-1]:
            assert "error" not in json.loads(ev), ev
    else:
        assert r.json()["choices"], r.text
