"""The ONNX engine on the bundled SmolLM2: greedy top-1 agreement with the torch engine."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")


@pytest.mark.integration
def test_bundled_fp32_top1_agreement_over_256_greedy_tokens():
    from edgeweave.models import load
    from edgeweave.runtime.engine import LocalEngine
    from edgeweave.runtime.engines.base import EngineConfig, create_engine
    from edgeweave.runtime.engines.onnx_chain import StageChain
    from edgeweave.runtime.fast import accelerate_decode
    from edgeweave.runtime.generate import SamplingParams, generate_step
    from edgeweave.types import Shard

    lm = load("smollm2-135m-instruct")
    accelerate_decode(lm.model)
    ids = lm.tokenizer.encode_chat([{"role": "user", "content":
                                     "Write a short story about a thermostat that learns."}])
    n = 256
    ref = list(generate_step(LocalEngine(lm.model, max_len=512), ids,
                             SamplingParams(max_tokens=n, ignore_eos=True)))
    assert len(ref) == n

    stage = create_engine(EngineConfig("smollm2-135m-instruct", Shard(0, 30, 30),
                                       backend="onnx"))
    onnx_engine = StageChain([stage], 512)
    # teacher forcing: at every position ONNX sees the torch engine's tokens so far
    logits = onnx_engine.prefill(ids)
    agree = 0
    for i, tok in enumerate(ref):
        agree += int(np.argmax(logits)) == tok
        if i + 1 < n:
            logits = onnx_engine.decode(tok)
    assert agree / n >= 0.99, f"top-1 agreement {agree}/{n}"
    # and free-running greedy text starts the same way
    got = list(generate_step(StageChain([stage], 512, "free"), ids,
                             SamplingParams(max_tokens=16, ignore_eos=True)))
    assert got == ref[:16]
