"""ONNX stage engine: equality with the torch engine, splits, low-bit error, export cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from edgeweave.errors import ConfigError, GenerationError  # noqa: E402
from edgeweave.runtime.engines.base import EngineConfig, StageEngine, create_engine  # noqa: E402
from edgeweave.runtime.engines.onnx import (  # noqa: E402
    OnnxStageEngine,
    SessionProfile,
    engine_from_model,
)
from edgeweave.runtime.engines.onnx_chain import StageChain  # noqa: E402
from edgeweave.runtime.engines.onnx_export import ExportSpec  # noqa: E402
from edgeweave.runtime.engines.onnx_quant import (  # noqa: E402
    Packed,
    QuantSpec,
    concat,
    rtn,
    weight_of,
)
from edgeweave.runtime.engines.torch import TorchStageEngine  # noqa: E402
from edgeweave.types import Shard  # noqa: E402

PROMPT = [5, 9, 3, 7, 11, 40, 2, 33]
STEPS = [4, 8, 15, 16, 23, 42]


def _onnx(model, tmp_path, start, end, variant="fp32", **spec_kw) -> OnnxStageEngine:
    n = model.cfg.num_layers
    cfg = EngineConfig("tiny", Shard(start, end, n), variant, backend="onnx", threads=1)
    spec = ExportSpec(start, end, weights=variant, max_len=model.cfg.max_position, **spec_kw)
    return engine_from_model(model, cfg, tmp_path / f"{variant}-{start}-{end}-{len(spec_kw)}",
                             spec, SessionProfile(threads=1))


def _torch(model) -> TorchStageEngine:
    n = model.cfg.num_layers
    return TorchStageEngine(EngineConfig("tiny", Shard(0, n, n)), model=model)


def _trace(engine) -> list[np.ndarray]:
    """Logits after the prompt, after each decode step and after a rollback + chunk."""
    out = [engine.prefill(PROMPT)]
    out += [engine.decode(t) for t in STEPS]
    first = engine.stages[0] if isinstance(engine, StageChain) else None
    if first is not None:  # rollback: forget the last 3 tokens, feed them again as a chunk
        n = len(PROMPT) + len(STEPS) - 3
        for st in engine.stages:
            st.truncate(engine.session_id, n)
        out.append(engine._run(STEPS[-3:]))
    return out


def test_fp32_matches_torch_engine(tiny_model, tmp_path):
    ref = _trace(StageChain([_torch(tiny_model)], 64))
    got = _trace(StageChain([_onnx(tiny_model, tmp_path, 0, 4)], 64))
    assert len(ref) == len(got) == 1 + len(STEPS) + 1
    for a, b in zip(ref, got, strict=True):
        assert b.shape == (tiny_model.cfg.vocab_size,)
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_any_two_way_split_equals_whole_graph(tiny_model, tmp_path, cut):
    whole = _trace(StageChain([_onnx(tiny_model, tmp_path, 0, 4)], 64))
    split = StageChain([_onnx(tiny_model, tmp_path, 0, cut), _onnx(tiny_model, tmp_path, cut, 4)],
                       64)
    assert all(isinstance(st, StageEngine) for st in split.stages)
    for a, b in zip(whole, _trace(split), strict=True):
        # bit for bit: the later stage's first norm is the fused kernel the whole graph runs
        # there (a plain RMSNorm differed by ~1e-6, which int8 activations can carry on)
        np.testing.assert_array_equal(b, a)


def test_middle_stage_maps_hidden_states(tiny_model, tmp_path):
    eng = _onnx(tiny_model, tmp_path, 1, 3)
    eng.open("s", 32)
    h = torch.randn(1, 5, tiny_model.cfg.hidden_size)
    out = eng.forward("s", h.numpy())
    ref = h.clone()
    cache = tiny_model.new_cache(32)
    with torch.no_grad():
        for i in (1, 2):
            ref = tiny_model.block(i, ref, cache)
    assert out.shape == h.shape and eng.length("s") == 5
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-5, rtol=1e-5)
    assert eng.session_bytes("s") == 2 * 2 * tiny_model.cfg.num_kv_heads * 32 * 16 * 4


@pytest.mark.parametrize("variant,bits", [("int8", 8), ("int4", 4)])
def test_low_bit_graph_computes_the_packed_weights(tiny_model, tmp_path, variant, bits):
    """At accuracy level 0 the graph multiplies by exactly the dequantized RTN weights; at
    level 4 (int8 activations, the fast CPU path) the error stays bounded."""
    spec = QuantSpec(bits=bits, group_size=32)
    deq = _dequantized_copy(tiny_model, spec)
    ref = _trace(StageChain([_torch(deq)], 64))
    exact = _trace(StageChain([_onnx(tiny_model, tmp_path, 0, 4, variant, accuracy_level=0)], 64))
    fast = _trace(StageChain([_onnx(tiny_model, tmp_path, 0, 4, variant)], 64))
    fp32 = _trace(StageChain([_torch(tiny_model)], 64))
    for r, e, f, full in zip(ref, exact, fast, fp32, strict=True):
        torch.testing.assert_close(e, r, atol=2e-4, rtol=1e-4)
        scale = np.abs(full).max()
        assert np.abs(f - r).max() < 0.05 * scale  # activation rounding only
        bound = 0.05 if bits == 8 else 0.5  # weight rounding of a random tiny model
        assert np.abs(f - full).max() < bound * scale


def _dequantized_copy(model, spec: QuantSpec):
    import copy

    m = copy.deepcopy(model)
    with torch.no_grad():
        for name, mod in m.named_modules():
            if type(mod) is torch.nn.Linear:
                w = weight_of(mod, spec)
                assert isinstance(w, Packed), name
                mod.weight.copy_(torch.from_numpy(w.dequantize()))
    return m


def test_rtn_layout_round_trip_and_error():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 64)).astype(np.float32)
    for bits, sym in [(4, False), (4, True), (8, False), (8, True)]:
        p = rtn(w, QuantSpec(bits, 32, sym))
        assert p.qweight.shape == (48, 2, 32 * bits // 8) and p.scales.shape == (48, 2)
        step = p.scales.max()
        assert np.abs(p.dequantize() - w).max() <= 0.5 * step + 1e-6
        assert p.nbytes < w.nbytes * (bits + 2) / 32
    with pytest.raises(ConfigError, match="group size"):
        rtn(w[:, :48], QuantSpec(4, 32))
    with pytest.raises(ConfigError, match="4 or 8"):
        QuantSpec(bits=3)


def test_fusing_integer_and_default_zero_points_keeps_every_weight():
    # q_proj with integer zero points beside k/v without: one fused weight whose
    # integer offsets became float zeros, the very same numbers
    rng = np.random.default_rng(1)
    parts = [rtn(rng.standard_normal((n, 64)).astype(np.float32), QuantSpec(4, 32, sym))
             for n, sym in [(32, False), (16, True), (16, True)]]
    assert parts[0].zero_points is not None and parts[1].zero_points is None
    fused = concat(parts)
    assert fused.zero_points is None and fused.float_zeros is not None
    np.testing.assert_allclose(fused.dequantize(),
                               np.concatenate([p.dequantize() for p in parts]), rtol=0,
                               atol=1e-6)


def test_export_cache_reused_and_rebuilt_when_stale(tiny_model, tiny_folder, tmp_home):
    cfg = EngineConfig(str(tiny_folder), Shard(0, 4, 4), backend="onnx", threads=1)
    first = create_engine(cfg)
    assert isinstance(first, OnnxStageEngine) and first.info["export_reused"] is False
    manifest = json.loads((first.path.parent / "manifest.json").read_text())
    import onnxruntime as ort

    assert manifest["onnxruntime"] == ort.__version__ and manifest["opset"] >= 17
    assert manifest["spec"]["start"] == 0 and manifest["recipe"]["source"] == "model"
    assert str(first.path).startswith(str(tmp_home / "onnx"))
    assert create_engine(cfg).info["export_reused"] is True
    # a changed source (new weights) makes the export stale
    cfg_json = tiny_folder / "config.json"
    cfg_json.write_text(cfg_json.read_text() + " ")
    again = create_engine(cfg)
    assert again.info["export_reused"] is False
    chain = StageChain([again], 32)
    ref = StageChain([_torch(tiny_model)], 32)
    torch.testing.assert_close(chain.prefill(PROMPT), ref.prefill(PROMPT), atol=1e-4, rtol=1e-4)


def test_generate_runs_unchanged_on_the_onnx_chain(tiny_model, tiny_folder, tmp_home):
    from edgeweave.models import load
    from edgeweave.runtime.engine import LocalEngine
    from edgeweave.runtime.generate import SamplingParams, generate

    tok = load(str(tiny_folder)).tokenizer
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    onnx_engine = StageChain([create_engine(EngineConfig(str(tiny_folder), Shard(0, 4, 4),
                                                         backend="onnx", threads=1))], 128)
    a = generate(LocalEngine(tiny_model, 128), tok, "what is the capital of france", params)
    b = generate(onnx_engine, tok, "what is the capital of france", params)
    assert b.token_ids == a.token_ids and len(b.token_ids) == 12
    assert b.metrics.decode_tps > 0


def test_session_errors(tiny_model, tmp_path):
    eng = _onnx(tiny_model, tmp_path, 0, 4)
    with pytest.raises(Exception, match="open it first"):
        eng.forward("nope", torch.tensor([[1]]))
    eng.open("s", 4)
    with pytest.raises(GenerationError, match="KV cache holds 4"):
        eng.forward("s", torch.tensor([[1, 2, 3, 4, 5]]))
    eng.close("s")
    assert eng.sessions() == []
    with pytest.raises(ConfigError, match="device kind"):
        SessionProfile(device="toaster")
    with pytest.raises(ConfigError, match="weight format"):
        ExportSpec(0, 4, weights="int3")


def test_cli_export_splits_and_generates(tiny_folder, tmp_home, capsys):
    from edgeweave.cli.app import main

    assert main(["export", "--model", str(tiny_folder), "--cuts", "2", "--threads", "1",
                 "--prompt", "hello world", "--max-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "[0, 2)" in out and "[2, 4)" in out and "decode" in out
    assert len(list((tmp_home / "onnx").rglob("manifest.json"))) == 2
    assert main(["export", "--model", str(tiny_folder), "--variant", "int3"]) == 2


def test_execution_provider_from_device_profile():
    from edgeweave.runtime.engines.onnx import device_kind

    assert device_kind("jetson-orin-nano-8gb") == "jetson"
    assert device_kind("phone-flagship") == "npu-qualcomm"
    assert device_kind("phone-midrange") == "arm-cpu"
    assert device_kind("this-host") == "cpu"
    prof = SessionProfile.for_device("jetson-orin-nano-8gb", threads=2)
    # providers this wheel lacks fall back to CPU, never to an error
    assert prof.providers()[-1] == "CPUExecutionProvider"
    assert SessionProfile.for_device("rpi5-8gb").providers() == ["CPUExecutionProvider"]
