"""The real bundled SmolLM2-135M-Instruct: conversion cache and a known answer."""

from __future__ import annotations

import pytest

from edgeweave.models import catalog
from edgeweave.runtime.engine import LocalEngine
from edgeweave.runtime.fast import accelerate_decode
from edgeweave.runtime.generate import SamplingParams, generate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bundled():
    catalog.load(catalog.DEFAULT_MODEL)  # converts on a fresh machine (about 30 s), once
    lm, _, hit = catalog.timed_load(catalog.DEFAULT_MODEL)
    assert hit, "the second load must come from the safetensors cache"
    assert catalog.is_cached(catalog.DEFAULT_MODEL)
    return lm


def test_shape_of_the_bundled_model(bundled):
    c = bundled.config
    assert (c.family, c.num_layers, c.hidden_size, c.vocab_size) == ("llama", 30, 576, 49152)
    assert bundled.tokenizer.chat_template and bundled.tokenizer.eos_token == "<|im_end|>"


def test_capital_of_france_greedy_chat(bundled):
    accelerate_decode(bundled.model)
    engine = LocalEngine(bundled.model, max_len=256)
    r = generate(engine, bundled.tokenizer, "What is the capital of France?",
                 SamplingParams(max_tokens=24), chat=True)
    assert "Paris" in r.text
    assert r.finish_reason == "stop"  # ended on <|im_end|>, not on the token limit
    assert r.metrics.prompt_tokens > 5 and r.metrics.generated_tokens >= 5


def test_gemv_path_equals_the_torch_path(bundled):
    """The numpy GEMV route changes only the summation order, not the greedy tokens."""
    from edgeweave.models.checkpoint import load_folder

    plain = load_folder(bundled.folder)
    ids = bundled.tokenizer.encode("The sensor hub in the kitchen reports")
    p = SamplingParams(max_tokens=32, ignore_eos=True)
    want = generate(LocalEngine(plain.model, 128), plain.tokenizer, ids, p).token_ids
    accelerate_decode(bundled.model)
    got = generate(LocalEngine(bundled.model, 128), bundled.tokenizer, ids, p).token_ids
    assert got == want
