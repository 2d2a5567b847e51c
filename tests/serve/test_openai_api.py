"""The server through the official ``openai`` client, as a user would call it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from edgeweave.runtime.generate import SamplingParams, generate
from tests.serve.conftest import API_KEY, client

MODEL = "tiny-llama"
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}


def solo(sessions, messages, n):  # the single-process reference
    return generate(sessions.new_session(), sessions.tokenizer, messages,
                    SamplingParams(max_tokens=n, ignore_eos=True))


def test_streaming_chat_matches_single_process_and_carries_metrics(server, tiny_sessions):
    msgs = [{"role": "user", "content": "what is the battery of the sensor"}]
    stream = client(server).chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=12, stream=True,
        stream_options={"include_usage": True}, **GREEDY)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["length"]
    assert chunks[-1].usage.completion_tokens == 12
    ref = solo(tiny_sessions, msgs, 12)
    assert text == ref.text and chunks[-1].usage.prompt_tokens == ref.metrics.prompt_tokens
    ew = finals[0].model_extra["edgeweave"]
    assert ew["ttft_s"] > 0 and ew["decode_tok_s"] > 0 and ew["bytes_on_wire"] == 0


def test_non_streaming_chat_and_completion(server, tiny_sessions):
    c = client(server)
    msgs = [{"role": "system", "content": "answer"}, {"role": "user", "content": "hello world"}]
    r = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, **GREEDY)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == solo(tiny_sessions, msgs, 8).text
    assert r.usage.completion_tokens == 8 and r.usage.total_tokens == r.usage.prompt_tokens + 8
    assert r.model_extra["edgeweave"]["tpot_s"] > 0

    t = c.completions.create(model=MODEL, prompt="the sensor reads", max_tokens=6, **GREEDY)
    assert t.object == "text_completion" and t.usage.completion_tokens == 6
    pieces = list(c.completions.create(model=MODEL, prompt="the sensor reads", max_tokens=6,
                                       stream=True, **GREEDY))
    assert "".join(p.choices[0].text for p in pieces if p.choices) == t.choices[0].text


def test_twenty_concurrent_streams_all_finish_with_their_own_output(server, tiny_sessions):
    prompts = ["the kitchen door", "battery low on the gateway", "what is the room humidity",
               "hello device"]
    refs = {p: solo(tiny_sessions, [{"role": "user", "content": p}], 20).text for p in prompts}

    def one(i: int) -> tuple[str, str, int]:
        p = prompts[i % len(prompts)]
        s = client(server).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": p}], max_tokens=20, stream=True,
            stream_options={"include_usage": True}, **GREEDY)
        chunks = list(s)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return p, text, chunks[-1].usage.completion_tokens

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert len(results) == 20
    for p, text, n in results:  # no session saw another's KV cache
        assert n == 20 and text == refs[p]


def test_wrong_or_missing_api_key_is_401(server):
    with pytest.raises(openai.AuthenticationError) as e:
        client(server, "sk-wrong").models.list()
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    r = httpx.post(f"{server}/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]["message"]


def test_request_errors_are_openai_shaped(server):
    c = client(server)
    with pytest.raises(openai.BadRequestError) as e:  # 80 words > 64-token prompt limit
        c.chat.completions.create(model=MODEL, max_tokens=4,
                                  messages=[{"role": "user", "content": "the sensor " * 40}])
    assert e.value.code == "context_length_exceeded" and "limit of 64" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=MODEL, prompt="hello", max_tokens=1000)
    assert e.value.param == "max_tokens" and "limit of 100" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:  # the schema's bounds name the field
        c.completions.create(model=MODEL, prompt="hello", max_tokens=4, temperature=-1)
    assert e.value.param == "temperature" and "greater than or equal to 0" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=MODEL, prompt="hello", max_tokens=4, n=2)
    assert e.value.param == "n"
    with pytest.raises(openai.NotFoundError) as e:
        c.completions.create(model="gpt-4o", prompt="hello", max_tokens=4)
    assert e.value.code == "model_not_found" and MODEL in e.value.message
    r = httpx.post(f"{server}/v1/completions", json={"model": MODEL},
                   headers={"Authorization": f"Bearer {API_KEY}"})
    body = r.json()
    assert r.status_code == 400 and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == "prompt"


def test_models_health_and_prometheus_metrics(server):
    assert [m.id for m in client(server).models.list()] == [MODEL, "all-MiniLM-L6-v2"]
    h = httpx.get(f"{server}/health").json()
    assert h["status"] == "ok" and h["max_concurrent"] == 32
    client(server).completions.create(model=MODEL, prompt="hello", max_tokens=3, **GREEDY)
    # /metrics is behind the key like the API
    text = httpx.get(f"{server}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
    samples = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    assert samples["edgeweave_generated_tokens_total"] >= 3
    assert samples["edgeweave_time_to_first_token_seconds_count"] >= 1
    assert samples["edgeweave_time_per_output_token_seconds_count"] >= 1
    assert 'edgeweave_http_requests_total{path="/v1/completions",status="200"}' in text
