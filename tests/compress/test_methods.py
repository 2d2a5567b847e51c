"""Method quality on one layer, bad recipes, kernels and layouts."""

from __future__ import annotations

import pytest
import torch

from edgeweave.compress.modules import Int4Linear, Int8Linear, _int4_permutation
from edgeweave.compress.prune.masks import prune_mask
from edgeweave.compress.prune.sparsegpt import sparsegpt_prune
from edgeweave.compress.quant import dequant_int4, pack_nibbles, rtn_int4, rtn_int8, snr_db
from edgeweave.compress.quantize.gptq import gptq_quantize
from edgeweave.compress.recipes import (
    GPTQ,
    PRESETS,
    RTN,
    SVD,
    ChannelPrune,
    Distill,
    Pipeline,
    SparseGPT,
    Wanda,
    from_json,
)
from edgeweave.compress.spec import parse_recipe
from edgeweave.errors import ConfigError


@pytest.fixture(scope="module")
def layer() -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (96, 256) and correlated inputs with a few outlier channels, like real LLMs."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(96, 256, generator=g) * 0.05
    mix = torch.randn(256, 256, generator=g) / 16 + torch.eye(256)
    X = torch.randn(4096, 256, generator=g) @ mix
    X[:, :6] *= 8
    return W, X


def out_err(X: torch.Tensor, W: torch.Tensor, Wq: torch.Tensor) -> float:
    return float((X @ (W - Wq).T).pow(2).mean())


@pytest.mark.parametrize("group_size", [32, 128])
def test_gptq_beats_rtn_on_reconstruction(layer, group_size) -> None:
    W, X = layer
    H = X.T @ X / X.shape[0]
    rtn = dequant_int4(*rtn_int4(W, group_size))
    gptq = dequant_int4(*gptq_quantize(W, H, 4, group_size, symmetric=False))
    gptq_ao = dequant_int4(*gptq_quantize(W, H, 4, group_size, False, act_order=True))
    assert out_err(X, W, gptq) < 0.8 * out_err(X, W, rtn)
    assert out_err(X, W, gptq_ao) < 0.8 * out_err(X, W, rtn)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_wanda_and_sparsegpt_beat_magnitude_on_output_error(layer, pattern) -> None:
    W, X = layer
    H = X.T @ X / X.shape[0]
    mag = W.masked_fill(prune_mask(W.abs(), 0.5, pattern, per_row=False), 0)
    norms = torch.diagonal(H).sqrt()
    wanda = W.masked_fill(prune_mask(W.abs() * norms, 0.5, pattern, per_row=True), 0)
    sgpt = sparsegpt_prune(W, H, 0.5, pattern)
    for pruned in (mag, wanda, sgpt):
        assert float((pruned == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    assert out_err(X, W, wanda) < out_err(X, W, mag)
    assert out_err(X, W, sgpt) < out_err(X, W, mag)


def test_two_four_pattern_holds() -> None:
    scores = torch.rand(8, 16)
    mask = prune_mask(scores, 0.5, "2:4", per_row=True)
    assert torch.all(mask.reshape(8, 4, 4).sum(-1) == 2)


@pytest.mark.parametrize("make,needle", [
    (lambda: RTN(bits=5), "bits=5"),
    (lambda: RTN(bits=4, group_size=100), "group_size=100"),
    (lambda: RTN(bits=8, group_size=64), "group_size=None"),
    (lambda: GPTQ(bits=8), "bits=8"),
    (lambda: Wanda(sparsity=1.2), "sparsity=1.2"),
    (lambda: SparseGPT(sparsity=0.3, pattern="2:4"), "2:4"),
    (lambda: ChannelPrune(ratio=0), "ratio"),
    (lambda: SVD(energy=1.5), "energy"),
    (lambda: Distill(loss="mse"), "loss"),
    (lambda: Pipeline((RTN(bits=4), Wanda(0.5))), "last step"),
    (lambda: from_json('{"method": "nope"}'), "unknown compression method"),
    (lambda: from_json('{"method": "rtn", "params": {"bitz": 4}}'), "bitz"),
    (lambda: parse_recipe("int5"), "unknown recipe"),
])
def test_bad_recipes_fail_with_the_fix(make, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        make()


def test_group_size_not_dividing_the_width(tiny_lm, calib) -> None:
    from edgeweave.compress import compress
    from tests.conftest import make_cfg, random_model

    model = random_model(make_cfg(hidden_size=96, head_dim=24))  # 96 is not a multiple of 64
    with pytest.raises(ConfigError, match="does not divide the input width 96"):
        compress(model, RTN(bits=4, group_size=64))
    art = compress(model, RTN(bits=4, group_size=64, pad=True))  # the fix the message gives
    x = torch.randint(0, 128, (1, 8))
    assert snr_db(model(x), art.model(x)) > 5


def test_presets_round_trip_json() -> None:
    for r in PRESETS.values():
        assert from_json(r.to_json()) == r


def test_int4_public_layout_and_kernel_agree() -> None:
    W = torch.randn(40, 192) * 0.1  # 40 rows: not a multiple of 16, the kernel pads them
    q, s, z = rtn_int4(W, 64)
    m = Int4Linear.from_ints(q, s, z, 64, 192)
    assert torch.equal(m.qweight, pack_nibbles(q))
    assert torch.equal(m.qweight[:, 0] & 15, q[:, 0]) and torch.equal(m.qweight[:, 0] >> 4, q[:, 1])
    assert torch.equal(m.scales.float(), s) and torch.equal(m.zeros.float(), z)
    x = torch.randn(3, 192)
    ref = x.bfloat16().float() @ dequant_int4(q, s, z).T
    assert snr_db(ref, m(x)) > 40  # bf16 arithmetic only; the weights are identical


def test_int4_permutation_is_a_permutation() -> None:
    perm = _int4_permutation(32, 128)
    assert torch.equal(torch.sort(perm).values, torch.arange(32 * 128))


@pytest.mark.parametrize("mode,min_snr", [("w8a16", 40), ("w8a8", 25)])
def test_int8_kernels_use_our_integers(mode, min_snr) -> None:
    W = torch.randn(48, 64)
    q, s = rtn_int8(W, bf16_scales=mode == "w8a16")
    m = Int8Linear(q, s, mode=mode)
    assert torch.equal(m.qweight, q) and torch.equal(m.scales, s)
    x = torch.randn(2, 5, 64)
    # w8a16: bf16 activations only; w8a8: activations are quantized per tensor too
    assert snr_db(x @ (q.float() * s[:, None]).T, m(x)) > min_snr
