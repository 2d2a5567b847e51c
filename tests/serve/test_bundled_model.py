"""The real bundled SmolLM2 behind the server, through the openai client."""

from __future__ import annotations

import pytest

from edgeweave.runtime.local import EngineChoice
from edgeweave.serve.backend import LocalSessions
from edgeweave.serve.config import ServeConfig
from edgeweave.serve.server import BackgroundServer
from tests.serve.conftest import client


@pytest.mark.integration
def test_capital_of_france_greedy_says_paris():
    # fp32 on the default backend: the reference weights answer this one (the 4-bit and
    # 8-bit variants of this 135M model start with "L'Étoile" instead; perplexity and the
    # task suite are their quality measures, see benchmarks/serve.py and tasks.py)
    sessions = LocalSessions.load("smollm2-135m-instruct", EngineChoice(variant="fp32"))
    with BackgroundServer(sessions, ServeConfig(api_keys=("k",))) as url:
        stream = client(url, "k").chat.completions.create(
            model="smollm2-135m-instruct", temperature=0, max_tokens=20, stream=True,
            messages=[{"role": "user", "content": "What is the capital of France?"}])
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text, text
    ew = next(c for c in chunks if c.choices and c.choices[0].finish_reason).model_extra
    assert ew["edgeweave"]["decode_tok_s"] > 0
    assert ew["edgeweave"]["backend"] == "onnx" and ew["edgeweave"]["variant"] == "fp32"
