"""logprobs / top_logprobs through the official openai client, streamed and not."""

from __future__ import annotations

import math

import openai
import pytest

from edgeweave.runtime.generate import SamplingParams, generate
from tests.serve.conftest import client

MODEL = "tiny-llama"
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}
MSGS = [{"role": "user", "content": "what is the battery of the sensor"}]


def test_chat_logprobs_have_openais_shape_and_the_greedy_token_is_the_top_one(server):
    r = client(server).chat.completions.create(model=MODEL, messages=MSGS, max_tokens=8,
                                               logprobs=True, top_logprobs=5, **GREEDY)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 8
    for item in content:
        assert item.logprob <= 0 and isinstance(item.bytes, list)
        assert item.token.encode() == bytes(item.bytes) or "\ufffd" in item.token
        tops = item.top_logprobs
        assert len(tops) == 5
        assert [t.logprob for t in tops] == sorted((t.logprob for t in tops), reverse=True)
        assert item.logprob == pytest.approx(max(t.logprob for t in tops))  # greedy
        assert tops[0].token == item.token and tops[0].bytes == item.bytes
        assert sum(math.exp(t.logprob) for t in tops) <= 1 + 1e-9


def test_chat_logprobs_equal_the_in_process_generation(server, tiny_sessions):
    r = client(server).chat.completions.create(model=MODEL, messages=MSGS, max_tokens=6,
                                               logprobs=True, top_logprobs=2, **GREEDY)
    ref = generate(tiny_sessions.new_session(), tiny_sessions.tokenizer, MSGS,
                   SamplingParams(max_tokens=6, ignore_eos=True, logprobs=2))
    got = [(c.logprob, [t.logprob for t in c.top_logprobs]) for c in r.choices[0].logprobs.content]
    want = [(x.logprob, [lp for _, lp in x.top]) for x in ref.logprobs]
    assert len(got) == len(want) == 6
    for (g, gt), (w, wt) in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-6) and gt == pytest.approx(wt, abs=1e-6)


def test_chat_without_top_logprobs_lists_none_and_without_logprobs_gives_null(server):
    c = client(server)
    r = c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=3, logprobs=True,
                                  **GREEDY)
    assert [item.top_logprobs for item in r.choices[0].logprobs.content] == [[], [], []]
    r = c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=3, **GREEDY)
    assert r.choices[0].logprobs is None


def test_streamed_chat_logprobs_are_the_non_streamed_ones_split_over_chunks(server):
    c = client(server)
    whole = c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=10,
                                      logprobs=True, top_logprobs=3, **GREEDY)
    chunks = list(c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=10,
                                            logprobs=True, top_logprobs=3, stream=True,
                                            **GREEDY))
    streamed = [item for ch in chunks if ch.choices and ch.choices[0].logprobs
                for item in ch.choices[0].logprobs.content]
    assert [(i.token, i.logprob) for i in streamed] == \
        [(i.token, i.logprob) for i in whole.choices[0].logprobs.content]
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content


def test_legacy_completion_logprobs_shape_and_offsets(server):
    r = client(server).completions.create(model=MODEL, prompt="the sensor reads",
                                          max_tokens=8, logprobs=3, **GREEDY)
    lp = r.choices[0].logprobs
    n = r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == \
        len(lp.text_offset) == n == 8
    assert lp.text_offset[0] == 0
    for i, (tok, logprob, top) in enumerate(zip(lp.tokens, lp.token_logprobs, lp.top_logprobs,
                                                strict=True)):
        assert logprob <= 0 and 1 <= len(top) <= 4  # the 3 likeliest and the sampled one
        assert top[tok] == pytest.approx(logprob) and logprob == pytest.approx(max(top.values()))
        assert sum(math.exp(v) for v in top.values()) <= 1 + 1e-9
        if i:
            assert lp.text_offset[i] == lp.text_offset[i - 1] + len(lp.tokens[i - 1])


def test_streamed_legacy_logprobs_continue_the_offsets_across_chunks(server):
    c = client(server)
    whole = c.completions.create(model=MODEL, prompt="the door", max_tokens=7, logprobs=1,
                                 **GREEDY).choices[0].logprobs
    tokens, offsets, lps = [], [], []
    for ch in c.completions.create(model=MODEL, prompt="the door", max_tokens=7, logprobs=1,
                                   stream=True, **GREEDY):
        if ch.choices and ch.choices[0].logprobs:
            tokens += ch.choices[0].logprobs.tokens
            offsets += ch.choices[0].logprobs.text_offset
            lps += ch.choices[0].logprobs.token_logprobs
    assert (tokens, offsets) == (whole.tokens, whole.text_offset)
    assert lps == pytest.approx(whole.token_logprobs)


@pytest.mark.parametrize(("kind", "extra", "param"), [
    ("chat", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("chat", {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ("chat", {"top_logprobs": 2}, "top_logprobs"),  # top_logprobs needs logprobs: true
    ("text", {"logprobs": 21}, "logprobs"),
    ("text", {"logprobs": -1}, "logprobs"),
])
def test_out_of_range_logprobs_are_400_naming_the_field(server, kind, extra, param):
    c = client(server)
    with pytest.raises(openai.BadRequestError) as e:
        if kind == "chat":
            c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=2, **extra)
        else:
            c.completions.create(model=MODEL, prompt="hello", max_tokens=2, **extra)
    assert e.value.status_code == 400 and e.value.param == param


@pytest.mark.integration
def test_bundled_model_logprob_bytes_join_into_the_answer():
    # a byte-level BPE splits characters over tokens: the bytes, not the token texts, are exact
    from edgeweave.serve.backend import LocalSessions
    from edgeweave.serve.config import ServeConfig
    from edgeweave.serve.server import BackgroundServer

    sessions = LocalSessions.load("smollm2-135m-instruct")
    with BackgroundServer(sessions, ServeConfig()) as url:
        r = client(url, "none").chat.completions.create(
            model="smollm2-135m-instruct", temperature=0, max_tokens=24, logprobs=True,
            top_logprobs=3, messages=[{"role": "user", "content": "Say hello in Japanese."}])
        # under a format mask the figures stay the model's own (raw logits): the sampled
        # token is one the format allows, not necessarily the model's top one
        g = client(url, "none").chat.completions.create(
            model="smollm2-135m-instruct", temperature=0, max_tokens=8, logprobs=True,
            top_logprobs=5, messages=[{"role": "user", "content": "Is fire cold? yes or no"}],
            extra_body={"guided_choice": ["zebra", "quartz"]})
    assert g.choices[0].message.content in ("zebra", "quartz")
    first = g.choices[0].logprobs.content[0]
    assert first.logprob < first.top_logprobs[0].logprob  # the model would not say "zebra"
    assert first.top_logprobs[0].token.strip().lower() not in ("zebra", "quartz", "z", "q")
    for c in g.choices[0].logprobs.content:
        assert c.logprob <= c.top_logprobs[0].logprob <= 0
    content = r.choices[0].logprobs.content
    # (max_tokens may stop inside a character: the text ends in U+FFFD there, as decoded)
    joined = b"".join(bytes(c.bytes) for c in content).decode("utf-8", "replace")
    assert any("\ufffd" in c.token for c in content)  # some token is part of a character
    assert joined == r.choices[0].message.content and len(content) == r.usage.completion_tokens
    for c in content:
        assert c.logprob == pytest.approx(c.top_logprobs[0].logprob)  # greedy: the top token
