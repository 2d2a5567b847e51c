"""Structured output: every answer parses and fits its format, on any weights.

A tiny random-weight model with the bundled SmolLM2 tokenizer (a byte-level BPE that the
grammar library reads) writes whatever its random logits prefer *within* the format, so the
format, not the model, is what makes the output valid. Requests go through the real server
and the official ``openai`` client.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

from edgeweave.errors import GenerationError
from edgeweave.runtime.constraints import OutputFormat
from edgeweave.runtime.generate import SamplingParams, generate
from edgeweave.serve.backend import LocalSessions
from edgeweave.serve.config import ServeConfig
from edgeweave.serve.server import BackgroundServer
from tests.conftest import bpe_folder
from tests.serve.conftest import client

pytestmark = pytest.mark.integration  # the bundled tokenizer comes from the converted model

SCHEMAS = [
    {"type": "object", "properties": {"device": {"enum": ["heater", "fan", "blinds"]},
                                      "action": {"enum": ["on", "off"]}},
     "required": ["device", "action"], "additionalProperties": False},
    {"type": "object", "properties": {"room": {"type": "string", "maxLength": 8},
                                      "level": {"type": "integer", "minimum": 0,
                                                "maximum": 10}},
     "required": ["room", "level"], "additionalProperties": False},
    {"type": "object", "properties": {"readings": {"type": "array", "items": {"type": "number"},
                                                   "minItems": 1, "maxItems": 3}},
     "required": ["readings"], "additionalProperties": False},
    {"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 2},
]


@pytest.fixture(scope="module")
def bpe_sessions(tmp_path_factory: pytest.TempPathFactory) -> LocalSessions:
    from edgeweave.models.checkpoint import load_folder

    return LocalSessions.from_loaded(load_folder(bpe_folder(
        tmp_path_factory.mktemp("bpe") / "tiny-bpe")))


@pytest.fixture(scope="module")
def url(bpe_sessions):
    with BackgroundServer(bpe_sessions, ServeConfig(max_tokens_limit=200)) as u:
        yield u


@pytest.mark.parametrize("schema", SCHEMAS, ids=["enum", "bounded", "array", "top-array"])
def test_json_schema_output_is_valid_for_the_schema(url, schema):
    c = client(url, "x")
    for seed in range(3):
        r = c.chat.completions.create(
            model="tiny-bpe", messages=[{"role": "user", "content": "the sensor"}],
            max_tokens=200, temperature=1.0, seed=seed,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "cmd", "schema": schema, "strict": True}})
        text = r.choices[0].message.content
        assert r.choices[0].finish_reason == "stop", text
        jsonschema.validate(json.loads(text), schema)


def test_json_object_and_label_sets(url):
    c = client(url, "x")
    r = c.chat.completions.create(model="tiny-bpe", max_tokens=200, temperature=0,
                                  messages=[{"role": "user", "content": "hello"}],
                                  response_format={"type": "json_object"})
    text = r.choices[0].message.content
    if r.choices[0].finish_reason == "stop":  # random weights may run out of tokens first
        assert isinstance(json.loads(text), dict)
    else:
        assert text.startswith("{")
    labels = ["walking", "running", "standing", "badminton"]
    for seed in range(4):
        r = c.completions.create(model="tiny-bpe", prompt="activity:", max_tokens=20,
                                 temperature=1.0, seed=seed, extra_body={"guided_choice": labels})
        assert r.choices[0].text in labels


def test_streaming_keeps_the_format(url):
    schema = SCHEMAS[0]
    chunks = list(client(url, "x").chat.completions.create(
        model="tiny-bpe", messages=[{"role": "user", "content": "x"}], stream=True,
        max_tokens=100, response_format={"type": "json_schema",
                                         "json_schema": {"name": "c", "schema": schema}}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    jsonschema.validate(json.loads(text), schema)


def test_unusable_formats_are_openai_400s(url):
    import openai

    c = client(url, "x")
    bad = [{"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frob"}}},
           {"type": "yaml"}]
    for rf in bad:
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="tiny-bpe", messages=[{"role": "user",
                                                                   "content": "x"}],
                                      response_format=rf)
        assert e.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model="tiny-bpe", prompt="x", extra_body={"guided_choice": []})


def test_the_python_api_takes_the_same_formats(bpe_sessions):
    tok = bpe_sessions.tokenizer
    params = SamplingParams(max_tokens=60, temperature=1.0, seed=3,
                            output=OutputFormat.json_schema(SCHEMAS[1]))
    r = generate(bpe_sessions.new_session(), tok, "x", params)
    jsonschema.validate(json.loads(r.text), SCHEMAS[1])
    r = generate(bpe_sessions.new_session(), tok, "x",
                 SamplingParams(max_tokens=10, output=OutputFormat("regex", pattern="[0-9]{3}")))
    assert len(r.text) == 3 and r.text.isdigit()
    with pytest.raises(GenerationError):
        OutputFormat("json_schema", schema="[1, 2]")
    with pytest.raises(GenerationError):
        SamplingParams(output="json")
