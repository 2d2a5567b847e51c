"""The hand-built ONNX graph of Qwen3 and Gemma 3 stages against the torch engine: QK-norm,
sandwich norms, GeGLU, the scaled embedding, sliding windows (8 tokens here, so the 14-token
trace slides) with their own RoPE base, the query scale and soft-capped logits."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnxruntime")

from edgeweave.runtime.engines.onnx_chain import StageChain  # noqa: E402
from tests.conftest import make_cfg, random_model  # noqa: E402
from tests.runtime.test_onnx_engine import STEPS, _onnx, _torch, _trace  # noqa: E402

CASES = {
    "qwen3": make_cfg("qwen3"),
    "gemma3": make_cfg("gemma3", num_layers=6),
    "gemma3-capped": make_cfg("gemma3", final_logit_softcapping=2.0),
}


@pytest.fixture(params=list(CASES))
def family_model(request):
    return random_model(CASES[request.param], seed=2)


def test_fp32_graph_matches_torch_engine(family_model, tmp_path, one_torch_thread):
    n = family_model.cfg.num_layers
    ref = _trace(StageChain([_torch(family_model)], 64))
    got = _trace(StageChain([_onnx(family_model, tmp_path, 0, n)], 64))
    assert len(got) == 1 + len(STEPS) + 1
    for a, b in zip(ref, got, strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_two_stage_graphs_equal_the_whole(family_model, tmp_path, one_torch_thread):
    n = family_model.cfg.num_layers
    whole = _trace(StageChain([_onnx(family_model, tmp_path, 0, n)], 64))
    cut = n // 2
    split = StageChain([_onnx(family_model, tmp_path, 0, cut),
                        _onnx(family_model, tmp_path, cut, n)], 64)
    for a, b in zip(whole, _trace(split), strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_a_family_without_a_graph_is_refused_with_the_fix():
    from edgeweave.errors import ConfigError
    from edgeweave.runtime.engines.onnx_spec import ONNX_FAMILIES, check_exportable

    for fam in ("llama", "qwen3", "gemma3"):
        assert fam in ONNX_FAMILIES
        check_exportable(fam)
    with pytest.raises(ConfigError, match="--backend torch"):
        check_exportable("gemma4")
