"""Bad request bodies get one 4xx in OpenAI's shape, and the keep-alive connection lives on.

Every test here talks to a real uvicorn server on 127.0.0.1 through one ``httpx.Client``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgeweave.models.checkpoint import load_folder
from edgeweave.models.tokenizer import Tokenizer
from edgeweave.serve.backend import LocalSessions
from edgeweave.serve.config import ServeConfig
from edgeweave.serve.server import BackgroundServer
from tests.conftest import make_cfg, random_model, save_folder
from tests.serve.keepalive import (
    KEYED,
    assert_openai_error,
    assert_still_connected,
    post_json_text,
)

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 2}
TEXT = {"model": "tiny-llama", "prompt": "hello", "max_tokens": 2}


@pytest.fixture
def c(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=60) as client:
        yield client


# a lone surrogate, written as the JSON escape a client would send (json.dumps writes it so)
@pytest.mark.parametrize(("path", "text", "param"), [
    ("/v1/chat/completions", '{"model": "tiny-llama", "max_tokens": 2, "messages": '
                             '[{"role": "user", "content": "a \\ud800"}]}', "messages.0.content"),
    ("/v1/chat/completions", '{"model": "tiny-llama", "max_tokens": 2, "messages": [{"role": '
                             '"user", "content": [{"type": "text", "text": "\\udfff b"}]}]}',
     "messages.0.content.0.text"),
    ("/v1/completions", '{"model": "tiny-llama", "prompt": "a \\ud800", "max_tokens": 2}',
     "prompt"),
    ("/v1/completions", '{"model": "tiny-llama", "prompt": ["a \\ud800"], "max_tokens": 2}',
     "prompt.0"),
    ("/v1/completions", '{"model": "tiny-llama", "prompt": "a", "stop": ["\\ud800"], '
                        '"max_tokens": 2}', "stop.0"),
    ("/v1/completions", '{"model": "tiny-\\ud800", "prompt": "a", "max_tokens": 2}', "model"),
])
def test_a_lone_surrogate_is_400_and_the_connection_survives(c, path, text, param):
    r = post_json_text(c, path, text)
    err = assert_openai_error(r, 400, param)
    assert "surrogate" in err["message"] and err["type"] == "invalid_request_error"
    assert_still_connected(c, r)


def test_a_surrogate_pair_is_a_real_character_and_is_served(c):
    r = post_json_text(c, "/v1/completions",
                       '{"model": "tiny-llama", "prompt": "hello \\ud83d\\ude00", "max_tokens": 2}')
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("seed", [10**30, 2**63, -1])
def test_a_seed_outside_0_to_2_63_is_400_and_the_connection_survives(c, seed):
    r = post_json_text(c, "/v1/completions", json.dumps({**TEXT, "seed": seed}))
    assert_openai_error(r, 400, "seed")
    assert_still_connected(c, r)


def test_the_ends_of_the_seed_range_are_valid_seeds(c):
    for seed in (0, 2**63 - 1):
        r = post_json_text(c, "/v1/completions", json.dumps({**TEXT, "seed": seed}))
        assert r.status_code == 200, r.text


# ---- options we do not honour yet, and values outside their range ----------------------
@pytest.mark.parametrize(("body", "param"), [
    ({**CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
     "tools"),
    ({**CHAT, "tool_choice": "required"}, "tool_choice"),
    ({**CHAT, "functions": [{"name": "f"}]}, "functions"),
    ({**CHAT, "response_format": {"type": "xml"}}, "response_format"),
    ({**CHAT, "response_format": {"type": "json_schema", "json_schema": "x"}},
     "response_format"),
    # the tiny model's word-level tokenizer cannot drive a grammar: refused, not a 500
    ({**CHAT, "response_format": {"type": "json_object"}}, "response_format"),
    ({**CHAT, "top_logprobs": 3}, "top_logprobs"),  # without logprobs: true
    ({**CHAT, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({**CHAT, "logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ({**CHAT, "logprobs": 1}, "logprobs"),
    ({**TEXT, "logprobs": True}, "logprobs"),
    ({**TEXT, "logprobs": 21}, "logprobs"),
    ({**TEXT, "logprobs": -1}, "logprobs"),
    ({**TEXT, "logit_bias": {"5": 10}}, "logit_bias"),
])
def test_options_not_supported_yet_are_400_naming_the_field(c, body, param):
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    r = post_json_text(c, path, json.dumps(body))
    assert_openai_error(r, 400, param)
    assert_still_connected(c, r)


@pytest.mark.parametrize(("extra", "param"), [
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"repetition_penalty": -1.0}, "repetition_penalty"),
    ({"repetition_penalty": 1e-300}, "repetition_penalty"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"n": 0}, "n"),
    # strict types: no string or boolean coercion
    ({"stream": "yes"}, "stream"),
    ({"stream": 1}, "stream"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": "2"}, "max_tokens"),
    ({"ignore_eos": "true"}, "ignore_eos"),
    ({"stream": True, "stream_options": {"include_usage": "yes"}},
     "stream_options.include_usage"),
])
def test_values_outside_their_range_or_type_are_400_naming_the_field(c, extra, param):
    r = post_json_text(c, "/v1/completions", json.dumps({**TEXT, **extra}))
    assert_openai_error(r, 400, param)
    assert_still_connected(c, r)


def test_not_a_number_and_infinity_are_400(c):
    # Python's json module reads NaN and Infinity, and 1e400 as inf
    for text in ('{"model": "tiny-llama", "prompt": "a", "max_tokens": 2, "temperature": NaN}',
                 '{"model": "tiny-llama", "prompt": "a", "max_tokens": 2, "top_p": 1e400}'):
        r = post_json_text(c, "/v1/completions", text)
        assert_openai_error(r, 400)
        assert_still_connected(c, r)


@pytest.mark.parametrize("extra", [
    {"temperature": 2}, {"temperature": 0}, {"response_format": {"type": "text"}},
    {"tool_choice": "none"}, {"tools": []}, {"logprobs": False}, {"logit_bias": {}},
    # tiny values once overflowed float32 while sampling: NaN probabilities and a 500
    {"temperature": 1e-40}, {"top_p": 1e-50, "temperature": 1.0},
    {"repetition_penalty": 1e-3, "temperature": 1.0, "ignore_eos": True},
])
def test_values_at_the_edges_of_their_range_are_served(c, extra):
    r = post_json_text(c, "/v1/chat/completions", json.dumps({**CHAT, **extra}))
    assert r.status_code == 200, r.text


# ---- an unexpected failure is a 500 in OpenAI's shape, and keeps the connection ----------
class ExplodingChatTokenizer(Tokenizer):
    """A real tokenizer whose chat path fails as a bug in a handler would."""

    def encode_chat(self, messages):  # type: ignore[no-untyped-def]
        raise RuntimeError("the chat template blew up")


@pytest.fixture(scope="module")
def exploding(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder: Path = save_folder(random_model(make_cfg()), tmp_path_factory.mktemp("x") / "tiny-llama")
    sessions = LocalSessions.from_loaded(load_folder(folder))
    sessions.tokenizer = ExplodingChatTokenizer(folder)
    with BackgroundServer(sessions, ServeConfig(max_tokens_limit=8, default_max_tokens=2)) as url:
        yield url


def test_an_unexpected_exception_is_a_500_in_openai_shape_that_keeps_the_connection(exploding):
    with httpx.Client(base_url=exploding, timeout=60, headers=KEYED) as c:
        r = c.post("/v1/chat/completions", json=CHAT)
        err = assert_openai_error(r, 500)
        assert err["type"] == "server_error" and "RuntimeError" in err["message"]
        assert_still_connected(c, r)  # the completion path does not touch encode_chat
        # and a user's mistake on the same server is still a 400
        r = c.post("/v1/chat/completions", json={**CHAT, "temperature": 9})
        assert_openai_error(r, 400, "temperature")
        assert_still_connected(c, r)


def test_a_body_that_is_not_json_is_400_without_a_made_up_field(c):
    r = post_json_text(c, "/v1/completions", '{"model": "tiny-llama", "prompt": "a", ')
    err = assert_openai_error(r, 400)
    assert err["param"] is None and "not valid JSON" in err["message"]
    assert_still_connected(c, r)
