"""The bundled SmolLM2-135M through the named int8 variant (integration: real weights)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
# the autouse fixture isolates EDGEWEAVE_HOME; reuse the real converted model cache
REAL_HOME = Path(os.environ.get("EDGEWEAVE_HOME") or Path.home() / ".cache" / "edgeweave")


def test_int8_variant_answers_and_reloads_shards() -> None:
    from edgeweave.paths import home

    cached = REAL_HOME / "models"
    if cached.is_dir() and not (home() / "models").exists():
        (home() / "models").symlink_to(cached)
    from edgeweave.compress import load_artifact, read_manifest, variant
    from edgeweave.runtime.engine import LocalEngine
    from edgeweave.runtime.generate import SamplingParams, generate
    from edgeweave.types import Shard

    path = variant("int8")
    lm = load_artifact(path)
    r = generate(LocalEngine(lm.model, max_len=128), lm.tokenizer,
                 "What is the capital of France?", SamplingParams(max_tokens=12), chat=True)
    assert "Paris" in r.text
    assert read_manifest(path)["stats"]["size_vs_fp16"] <= 0.55
    tail = load_artifact(path, Shard(20, 30, 30)).model
    assert set(tail.layers) == {str(i) for i in range(20, 30)} and tail.lm_head is not None
