"""Cost model: hand-checked FLOPs and bytes, codecs, variants and artifact manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeweave.errors import ArtifactError
from edgeweave.profile import catalog
from edgeweave.profile import cost as C
from edgeweave.profile.variants import DEFAULT_VARIANTS, load_variants, variant_from_manifest

V = DEFAULT_VARIANTS


def test_per_block_quantities_match_hand_computation(tiny_cfg) -> None:
    m = C.ModelCosts.from_config(tiny_cfg, prompt_len=8, context=32)
    h, i, kv = 64, 128, 2 * 16
    params = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h
    assert m.block_params == params == tiny_cfg.block_params()
    assert m.block_flops_decode() == 2 * params + 4 * 4 * 16 * 32
    assert m.block_weight_bytes(V["fp32"]) == 4 * params
    assert m.block_weight_bytes(V["int4"]) == pytest.approx(params * V["int4"].bits_per_weight / 8)
    assert m.kv_bytes_per_token(V["fp32"]) == 2 * kv * 4
    assert m.kv_bytes_per_token(V["fp16"]) == 2 * kv * 2


def test_activation_bytes_per_codec(tiny_cfg) -> None:
    m = C.ModelCosts.from_config(tiny_cfg)
    assert m.activation_bytes("fp32") == 64 * 4
    assert m.activation_bytes("fp16") == 64 * 2
    assert m.activation_bytes("int8", tokens=3) == 3 * (64 + 4)  # + a per-token fp32 scale


def test_predictions_follow_the_hardware(tiny_cfg) -> None:
    big = C.ModelCosts.from_config(tiny_cfg.__class__(**{**tiny_cfg.to_dict(),
                                                         "hidden_size": 1024,
                                                         "intermediate_size": 4096}))
    pi4, pi5, a100 = (catalog.device(n) for n in ("rpi4-4gb", "rpi5-8gb", "cloud-a100-80gb"))
    t = {d.name: C.decode_token_s(big, d, V["fp32"]) for d in (pi4, pi5, a100)}
    assert t["rpi4-4gb"] > t["rpi5-8gb"] > t["cloud-a100-80gb"]
    assert C.decode_token_s(big, pi4, V["int4"]) < C.decode_token_s(big, pi4, V["int8"]) \
        < C.decode_token_s(big, pi4, V["fp32"])
    assert C.model_memory(big, V["int4"]) < C.model_memory(big, V["fp32"])
    slow = C.Calibration(bw_efficiency=0.5)
    assert C.decode_token_s(big, pi4, V["fp32"], slow) > t["rpi4-4gb"]
    assert C.ttft_s(big, pi4, V["fp32"]) > C.decode_token_s(big, pi4, V["fp32"])
    assert C.energy_j(2.0, pi4) == pytest.approx(2 * pi4.power_active_w)


def test_link_time_and_energy() -> None:
    lte = catalog.link("lte")
    up = C.hop_time_s(1e6, lte, upward=True)
    down = C.hop_time_s(1e6, lte, upward=False)
    assert up == pytest.approx(0.025 + 8e6 / 10e6) and down < up
    assert C.hop_time_s(1e6, lte, True, bandwidth_scale=0.5) > up
    assert C.hop_energy_j(1000, lte) == pytest.approx(1000 * 500e-9)


def test_variant_from_manifest(tmp_path: Path) -> None:
    art = tmp_path / "smol-int4-gptq"
    art.mkdir()
    (art / "manifest.json").write_text(json.dumps({
        "name": "int4-gptq", "bits_per_weight": 4.25,
        "metrics": {"perplexity": 17.0, "reference_perplexity": 15.8}}))
    v = variant_from_manifest(art)
    assert v.name == "int4-gptq" and v.bits_per_weight == 4.25
    assert v.quality == pytest.approx(15.8 / 17.0) and v.precision == "int4"
    assert "int4-gptq" in load_variants([art]) and "fp32" in load_variants([art])
    (art / "manifest.json").write_text("{broken")
    with pytest.raises(ArtifactError, match="cannot read artifact manifest"):
        variant_from_manifest(art)
