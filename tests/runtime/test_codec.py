"""Hidden-state codecs: exact bytes, round trips, quality thresholds (numpy tensors)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeweave.errors import ConfigError, RuntimeStageError
from edgeweave.runtime import codec


def _snr_db(x: np.ndarray, y: np.ndarray) -> float:
    return float(10 * np.log10((x ** 2).sum() / ((x - y) ** 2).sum()))


def test_fp32_bytes_are_little_endian_floats():
    x = np.array([[[1.0, -2.5]]], np.float32)
    data = codec.get("fp32").encode(x)
    assert data == struct.pack("<2f", 1.0, -2.5)
    np.testing.assert_array_equal(codec.get(0).decode(data, (1, 1, 2)), x)


def test_fp16_bytes_and_roundtrip():
    x = np.array([[0.5, 1.0, -3.0]], np.float32)
    data = codec.get("fp16").encode(x)
    assert data == struct.pack("<3e", 0.5, 1.0, -3.0)
    np.testing.assert_array_equal(codec.FP16.decode(data, (1, 3)), x)


def test_int8_layout_is_scales_then_values():
    # two tokens of two values: absmax 127 -> scale 1.0; absmax 2.54 -> scale 0.02
    x = np.array([[[127.0, -63.4], [2.54, 0.0]]], np.float32)
    data = codec.INT8.encode(x)
    scales = np.frombuffer(data[:8], dtype="<f4")
    assert len(data) == 2 * 4 + 4 == codec.INT8.size((1, 2, 2))
    np.testing.assert_allclose(scales, [1.0, 0.02], rtol=1e-6)
    assert data[8:] == bytes(np.array([127, -63, 127, 0], dtype=np.int8).tobytes())
    y = codec.INT8.decode(data, (1, 2, 2))
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, [[[127.0, -63.0], [2.54, 0.0]]], atol=1e-6)


def test_int8_zero_token_stays_zero():
    x = np.zeros((1, 3, 8), np.float32)
    np.testing.assert_array_equal(codec.INT8.decode(codec.INT8.encode(x), (1, 3, 8)), x)


@pytest.mark.parametrize("name,min_snr", [("fp16", 60.0), ("int8", 35.0)])
def test_lossy_codecs_keep_snr(name, min_snr):
    x = np.random.default_rng(0).standard_normal((1, 16, 576)).astype(np.float32) * 3
    c = codec.get(name)
    y = c.decode(c.encode(x), x.shape)
    assert _snr_db(x, y) > min_snr


def test_ids_codec_is_int32():
    ids = np.array([[1, 49151, 7]])
    data = codec.IDS.encode(ids)
    assert data == struct.pack("<3i", 1, 49151, 7)
    out = codec.IDS.decode(data, (1, 3))
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, ids)


def test_decoded_arrays_are_writable():
    # engines hand them to ONNX Runtime or torch.from_numpy, which refuse read-only memory
    for c in (codec.FP32, codec.FP16, codec.INT8):
        x = np.ones((1, 2, 4), np.float32)
        assert c.decode(c.encode(x), x.shape).flags.writeable


@pytest.mark.parametrize("name,expected", [("fp32", 4 * 576), ("fp16", 2 * 576), ("int8", 4 + 576)])
def test_bytes_per_token(name, expected):
    c = codec.get(name)
    x = np.random.default_rng(1).standard_normal((1, 1, 576)).astype(np.float32)
    assert len(c.encode(x)) == c.size((1, 1, 576)) == expected


def test_errors():
    with pytest.raises(ConfigError, match="unknown codec"):
        codec.get("bf8")
    with pytest.raises(RuntimeStageError, match="does not match"):
        codec.FP32.decode(b"\x00" * 7, (1, 2))


def test_top64_keeps_the_largest_logits_and_their_positions():
    logits = np.random.default_rng(1).standard_normal((1, 1000)).astype(np.float32)
    data = codec.TOP64.encode(logits)
    assert len(data) == 64 * 4 + 64 * 4 == codec.TOP64.size((1, 1000))
    vals = np.frombuffer(data[:256], dtype="<f4")
    idx = np.frombuffer(data[256:], dtype="<i4")
    np.testing.assert_array_equal(logits[0, idx.astype(np.int64)], vals)
    out = codec.TOP64.decode(data, (1, 1000))
    assert int(out.argmax()) == int(logits.argmax())
    top = np.argsort(-logits[0])[:64]
    np.testing.assert_array_equal(out[0, top], logits[0, top])
    assert np.isinf(out).sum() == 1000 - 64


@settings(max_examples=200, deadline=None)
@given(k=st.integers(1, 8), extra=st.integers(0, 900), seed=st.integers(0, 2**32 - 1),
       levels=st.sampled_from([0, 3, 50]), neg_inf=st.booleans())
def test_top_indices_find_the_k_largest_values(k, extra, seed, levels, neg_inf):
    # rows long enough for the chunked path (16 k and up, with a ragged last chunk), values
    # continuous or from a few levels (ties across the floor), -inf where a mask put it
    rng = np.random.default_rng(seed)
    v = 16 * k + extra
    row = (rng.integers(0, levels, v) if levels else rng.standard_normal(v) * 5
           ).astype(np.float32)
    if neg_inf:
        row[rng.random(v) < 0.5] = -np.inf
    idx = codec.top_indices(row, k)
    assert idx.shape == (k,) and len(set(idx.tolist())) == k
    np.testing.assert_array_equal(np.sort(row[idx]), np.sort(row)[-k:])


def test_top_indices_of_a_long_row_with_nan_fall_back_to_the_plain_partition():
    row = np.random.default_rng(2).standard_normal(49152).astype(np.float32)
    row[::7] = np.nan
    idx = codec.top_indices(row, 64)
    np.testing.assert_array_equal(np.sort(idx), np.sort(np.argpartition(row, -64)[-64:]))


def test_top64_of_a_bundled_size_vocabulary_and_several_rows():
    logits = np.random.default_rng(3).standard_normal((3, 1, 49152)).astype(np.float32)
    out = codec.TOP64.decode(codec.TOP64.encode(logits), (3, 1, 49152))
    for r in range(3):
        top = np.argsort(-logits[r, 0])[:64]
        np.testing.assert_array_equal(out[r, 0, top], logits[r, 0, top])
        assert np.isinf(out[r]).sum() == 49152 - 64


def test_top1_keeps_the_argmax_of_every_row_even_among_ties():
    logits = np.random.default_rng(4).standard_normal((2, 3, 1000)).astype(np.float32)
    logits[1, 2, [10, 700]] = 9.0  # a tie: argmax picks the lowest index, so must top1
    data = codec.TOP1.encode(logits)
    assert len(data) == 6 * 8 == codec.TOP1.size((2, 3, 1000))
    out = codec.TOP1.decode(data, (2, 3, 1000))
    np.testing.assert_array_equal(out.argmax(-1), logits.argmax(-1))
    assert out[1, 2, 10] == 9.0 and np.isinf(out).sum() == 6 * 999
    np.testing.assert_array_equal(out.max(-1), logits.max(-1))


def test_top1_refuses_an_index_outside_the_vocabulary():
    bad = np.float32(1.0).tobytes() + np.int32(1000).tobytes()
    with pytest.raises(RuntimeStageError, match="outside the 1000-token vocabulary"):
        codec.TOP1.decode(bad, (1, 1000))
