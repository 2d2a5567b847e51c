"""A new stage backend is one file in runtime/engines, found without a list to edit."""

from __future__ import annotations

import numpy as np
import pytest

import edgeweave.runtime.engines as engines_pkg
from edgeweave.errors import ConfigError
from edgeweave.runtime.engine import EngineSession
from edgeweave.runtime.engines import base
from edgeweave.runtime.generate import SamplingParams, generate
from edgeweave.runtime.local import EngineChoice, backends, tokenizer_for, whole_model
from tests.helpers import module_in_package

BACKEND_FILE = '''
"""A backend that runs the torch reference and counts its steps (docs/extending.md)."""
from edgeweave.runtime.engines.base import register_engine
from edgeweave.runtime.engines.torch import TorchStageEngine


class CountingEngine(TorchStageEngine):
    steps = 0

    def forward(self, session_id, x):
        type(self).steps += 1
        return super().forward(session_id, x)


@register_engine("counting")
def make(config):
    return CountingEngine(config)
'''


@pytest.fixture
def counting_backend(tmp_path):
    with module_in_package(engines_pkg, tmp_path, "counting", BACKEND_FILE):
        try:
            yield "counting"
        finally:
            base._ENGINES.pop("counting", None)


def test_the_shipped_backends_are_found_and_helpers_are_not():
    assert backends() == ("onnx", "torch")
    with pytest.raises(ConfigError, match="choose one of onnx, torch"):
        EngineChoice(backend="tensorrt", variant="fp32")


def test_a_backend_file_is_a_backend_everywhere(counting_backend, tiny_folder):
    assert counting_backend in backends()
    choice = EngineChoice(backend=counting_backend, variant="fp32")
    engine = whole_model(str(tiny_folder), choice)
    assert type(engine).__name__ == "CountingEngine"
    tok = tokenizer_for(str(tiny_folder))
    params = SamplingParams(max_tokens=5, ignore_eos=True)
    out = generate(EngineSession(engine, 32), tok, "the sensor reads", params)
    assert type(engine).steps == 5  # the prompt, then one forward per new token but the last
    ref = generate(EngineSession(whole_model(str(tiny_folder), EngineChoice("torch", "fp32")),
                                 32), tok, "the sensor reads", params)
    assert out.token_ids == ref.token_ids and np.all(np.array(out.token_ids) >= 0)
