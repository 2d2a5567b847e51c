"""Low-bit ONNX graphs from compression artifacts compute what the artifact holds."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
compress = pytest.importorskip("edgeweave.compress")

from edgeweave.runtime.engines.base import EngineConfig  # noqa: E402
from edgeweave.runtime.engines.onnx import engine_from_model  # noqa: E402
from edgeweave.runtime.engines.onnx_chain import StageChain  # noqa: E402
from edgeweave.runtime.engines.onnx_export import ExportSpec  # noqa: E402
from edgeweave.runtime.engines.onnx_quant import Packed, weight_of  # noqa: E402
from edgeweave.runtime.engines.torch import TorchStageEngine  # noqa: E402
from edgeweave.types import Shard  # noqa: E402
from tests.conftest import random_model  # noqa: E402

PROMPT = [5, 9, 3, 7, 11, 40, 2, 33]
STEPS = [4, 8, 15, 16]

RECIPES = {
    "int8-rtn": ("int8", lambda: compress.RTN(bits=8)),
    "int4-rtn-g32-asym": ("int4", lambda: compress.RTN(bits=4, group_size=32)),
    "int4-rtn-g128-padded": ("int4", lambda: compress.RTN(bits=4, group_size=128, pad=True)),
    "int4-sym-g32": ("int4-sym", lambda: compress.RTN(bits=4, group_size=32, symmetric=True)),
    # integer zero points: MatMulNBits and GatherBlockQuantized read them natively
    "int4-rtn-g32-intzp": ("int4", lambda: compress.RTN(bits=4, group_size=32, zero_point="int")),
    "int4-rtn-g64-intzp": ("int4", lambda: compress.RTN(bits=4, group_size=64, zero_point="int")),
    # float zeros but integer ones for o_proj and q_proj (fused with k/v, which keep float
    # zeros: the fused weight carries q's offsets as exact float zeros), an int8 table and head
    "int4-rtn-g32-asym-intzp-q8emb": ("int4", lambda: compress.RTN(
        bits=4, group_size=32, int_zero=("o_proj", "q_proj"), embedding_bits=8)),
}


def _dequantized(art, cfg):
    """A plain BlockModel holding exactly the artifact's dequantized numbers."""
    ref = random_model(cfg)
    state = {"embed_tokens.weight": art.embed_tokens.weight.float()}
    for name, mod in art.named_modules():
        if name and hasattr(mod, "dequantized"):
            state[f"{name}.weight"] = mod.dequantized().float()
    for k, v in art.state_dict().items():
        if "norm" in k:
            state[k] = v
    ref.load_state_dict(state, strict=False)
    return ref


def _trace(engine: StageChain) -> list[np.ndarray]:
    return [engine.prefill(PROMPT)] + [engine.decode(t) for t in STEPS]


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_artifact_graph_equals_dequantized_artifact(tiny_model, tmp_path, recipe):
    variant, make = RECIPES[recipe]
    cfg = tiny_model.cfg
    art = compress.compress(tiny_model, make()).model
    head = weight_of(art.lm_head, None)
    assert isinstance(head, Packed) and head.bits == (8 if variant == "int8" or "q8emb" in recipe else 4)
    whole = Shard(0, cfg.num_layers, cfg.num_layers)
    ref = _trace(StageChain([TorchStageEngine(EngineConfig("t", whole),
                                              model=_dequantized(art, cfg))], 64))
    own = _trace(StageChain([TorchStageEngine(EngineConfig("t", whole, variant), model=art)], 64))
    weights = {8: "int8", 4: "int4"}[make().weight_format().bits]
    for level in (0, 4):
        spec = ExportSpec(0, cfg.num_layers, weights=weights,
                          max_len=cfg.max_position, accuracy_level=level)
        eng = engine_from_model(art, EngineConfig("t", whole, variant, "onnx", threads=1),
                                tmp_path / f"{recipe}-{level}", spec)
        got = _trace(StageChain([eng], 64))
        ops = {n.name.rsplit("/", 1)[-1] for n in onnx.load(str(eng.path),
                                                          load_external_data=False).graph.node}
        # float zeros need the exact group-sum term; symmetric grids and integer zero points
        # are plain MatMulNBits
        assert ("GroupSum" in ops) == ("asym" in recipe or "g128" in recipe)
        assert ("zero_points" in str(onnx.load(str(eng.path), load_external_data=False)
                                     .graph.initializer)) == ("intzp" in recipe)
        for r, g, o in zip(ref, got, own, strict=True):
            scale = np.abs(r).max()
            if level == 0:  # fp32 activations: the very same numbers as the artifact
                # (integer zero points: the artifact's bf16 zero against the exact integer)
                tol = 2e-3 if "intzp" in recipe else 1e-4
                np.testing.assert_allclose(g, r, atol=tol * scale, rtol=tol)
            else:  # int8 activations (the fast CPU path): bounded like the torch kernels
                assert np.abs(g - r).max() < 0.05 * scale
                assert np.abs(o - r).max() < 0.1 * scale
