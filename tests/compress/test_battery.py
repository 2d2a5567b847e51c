"""One battery for every registered method: shape, size, bounded error, manifest and reload."""

from __future__ import annotations

import json

import pytest
import torch

from edgeweave.compress import compress, load_artifact
from edgeweave.compress.api import load_methods
from edgeweave.compress.artifact import read_manifest
from edgeweave.compress.quant import snr_db
from edgeweave.compress.recipes import (
    ASVD,
    GPTQ,
    METHODS,
    RTN,
    SVD,
    ChannelPrune,
    Distill,
    Magnitude,
    Pipeline,
    SmoothQuant,
    SparseGPT,
    Wanda,
    from_dict,
)

pytestmark = pytest.mark.kernels  # every packed module's kernel runs here

# (recipe, minimum logit SNR in dB on the tiny random model, maximum size vs fp16)
CASES = [
    (RTN(bits=8), 35.0, 0.56),
    (RTN(bits=4, group_size=32), 17.0, 0.40),
    (RTN(bits=4, group_size=64, symmetric=True), 15.0, 0.36),
    (RTN(bits=4, group_size=128), 15.0, 0.36),
    (GPTQ(bits=4, group_size=64), 16.5, 0.36),
    (GPTQ(bits=3, group_size=32, act_order=True), 15.0, 0.40),
    (SmoothQuant(alpha=0.5), 32.0, 0.56),
    (Magnitude(0.5), 12.5, 0.85),
    (Wanda(0.5), 12.5, 0.85),
    (SparseGPT(0.5), 13.5, 0.85),
    (Wanda(0.5, "2:4"), 9.5, 0.85),
    (ChannelPrune(0.5, multiple=32), 18.0, 0.90),
    (SVD(energy=0.8, min_saving=0.0), 9.0, 0.99),
    (ASVD(energy=0.8, min_saving=0.0), 9.0, 0.99),
    (Distill(student_layers=2, steps=6, batch=2, checkpoint_every=2), 7.0, 0.80),
    (Pipeline((Wanda(0.5), RTN(bits=4, group_size=64))), 11.0, 0.36),
]


def test_every_registered_method_is_in_the_battery() -> None:
    load_methods()
    covered = {type(r) for r, _, _ in CASES} | {Pipeline}
    assert set(METHODS) | {Pipeline} == covered


@pytest.mark.parametrize("recipe,min_snr,max_size", CASES, ids=[r.method for r, _, _ in CASES])
def test_battery(recipe, min_snr, max_size, tiny_lm, calib, probe_ids, tmp_path) -> None:
    ref = tiny_lm.model(probe_ids)
    art = compress(tiny_lm, recipe, calib=calib, out=tmp_path / "art")

    out = art.model(probe_ids)
    assert out.shape == ref.shape
    snr = snr_db(ref, out)
    print(f"SNR {recipe.method} {snr:.2f}")
    assert snr >= min_snr, snr

    manifest = read_manifest(art.path)
    assert from_dict(manifest["recipe"]) == recipe
    assert manifest["recipe"]["version"] == recipe.version
    assert manifest["source"]["fingerprint"] == tiny_lm.fingerprint
    assert manifest["calibration"]["tokens"] == calib.ids.numel()
    assert manifest["stats"]["size_vs_fp16"] <= max_size
    json.dumps(manifest)  # plain JSON all the way down

    reloaded = load_artifact(art.path)
    assert torch.equal(reloaded.model(probe_ids), out)
    assert reloaded.tokenizer.encode("the sensor") == tiny_lm.tokenizer.encode("the sensor")
