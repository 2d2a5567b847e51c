"""Preconditions of the private low-bit kernels, checked on any CPU.

On AVX-512 machines ``_weight_int8pack_mm`` segfaults on a weight that is not 64-byte
aligned; on AVX2 it does not. These tests check the guarantee itself (every buffer a kernel
reads is aligned, contiguous and owned) after compress, reload and sharding, so a machine
that would not crash still catches a regression.
"""

from __future__ import annotations

import pytest
import torch

from edgeweave.compress import compress, load_artifact
from edgeweave.compress.kernels import (
    ALIGN,
    KernelPreconditionError,
    int4_pack,
    int4_weight_mm,
    int8_prepack,
    int8_weight_mm,
    is_aligned,
    owned,
)
from edgeweave.compress.modules import Int4Linear, Int8Linear, QuantEmbedding
from edgeweave.compress.recipes import GPTQ, RTN
from edgeweave.types import Shard

pytestmark = pytest.mark.kernels

KERNEL_MODULES = (Int8Linear, Int4Linear, QuantEmbedding)


def misaligned(t: torch.Tensor, offset: int = 24) -> torch.Tensor:
    """A view of ``t``'s values whose data starts ``offset`` bytes past a 64-byte boundary."""
    nbytes = t.numel() * t.element_size()
    raw = torch.empty(nbytes + 2 * ALIGN, dtype=torch.uint8)
    start = (-raw.data_ptr()) % ALIGN + offset
    view = raw[start:start + nbytes].view(t.dtype).view(t.shape)
    view.copy_(t)
    assert view.data_ptr() % ALIGN == offset % ALIGN
    return view


def kernel_buffers(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, KERNEL_MODULES):
            out += [(f"{name}.{b}", t) for b, t in mod.named_buffers(recurse=False)]
    return out


def assert_all_owned(model: torch.nn.Module) -> int:
    bufs = kernel_buffers(model)
    bad = [(n, t.data_ptr() % ALIGN, t.is_contiguous()) for n, t in bufs
           if not (is_aligned(t) and t.is_contiguous())]
    assert not bad, bad
    return len(bufs)


def test_owned_copies_a_misaligned_view_and_keeps_aligned_tensors() -> None:
    t = torch.arange(256, dtype=torch.int8).reshape(16, 16)
    view = misaligned(t)
    fixed = owned(view)
    assert is_aligned(fixed) and fixed.is_contiguous() and torch.equal(fixed, t)
    assert fixed.data_ptr() != view.data_ptr()
    aligned = torch.zeros(64, 64)
    assert owned(aligned) is aligned
    assert owned(aligned.t()).is_contiguous()
    assert owned(aligned, torch.bfloat16).dtype == torch.bfloat16


def test_int8_kernel_refuses_a_misaligned_weight_instead_of_crashing() -> None:
    q = torch.randint(-127, 128, (128, 128), dtype=torch.int8)
    s = torch.rand(128).to(torch.bfloat16)
    x = torch.randn(3, 128)
    with pytest.raises(KernelPreconditionError, match="address % 64 = 24"):
        int8_weight_mm(x, misaligned(q), s)
    with pytest.raises(KernelPreconditionError, match="dtype"):
        int8_weight_mm(x, q.to(torch.int16), s)
    with pytest.raises(KernelPreconditionError, match="not contiguous"):
        int8_weight_mm(x, q.t(), s)
    with pytest.raises(KernelPreconditionError, match="scales"):
        int8_weight_mm(x, q, s[:64])
    with pytest.raises(KernelPreconditionError, match="2-D"):
        int8_weight_mm(x[:, :64], q, s)


def test_int8_kernel_takes_a_misaligned_input_by_copying_it() -> None:
    q = torch.randint(-127, 128, (128, 128), dtype=torch.int8)
    s = torch.rand(128).to(torch.bfloat16)
    x = torch.randn(3, 128).to(torch.bfloat16)
    ref = int8_weight_mm(x, q, s)
    assert torch.equal(int8_weight_mm(misaligned(x, 8), q, s), ref)
    want = (x.float() @ (q.float() * s.float()[:, None]).t())
    assert torch.allclose(ref.float(), want, rtol=0.05, atol=0.5)


def test_int4_kernel_checks_its_buffers() -> None:
    q = torch.randint(0, 16, (32, 64), dtype=torch.int32)
    packed = int4_pack(q)
    assert is_aligned(packed)
    sz = torch.ones(2, 32, 2, dtype=torch.bfloat16)
    x = torch.randn(2, 64)
    y = int4_weight_mm(x, packed, 32, sz)
    assert y.shape == (2, 32)
    with pytest.raises(KernelPreconditionError, match="address"):
        int4_weight_mm(x, misaligned(packed, 8), 32, sz)
    with pytest.raises(KernelPreconditionError, match="disagree"):
        int4_weight_mm(x, packed, 64, sz)
    with pytest.raises(KernelPreconditionError, match="multiple of 16"):
        int4_pack(q[:8])


def test_int8_prepack_refuses_bad_buffers_with_the_fix() -> None:
    q = torch.randint(-127, 128, (32, 64), dtype=torch.int8)
    s = torch.rand(32, dtype=torch.float64) / 100
    with pytest.raises(KernelPreconditionError, match=r"int8 prepack: qweight .*dtype torch.int32"):
        int8_prepack(q.to(torch.int32), s)
    with pytest.raises(KernelPreconditionError, match="qweight .*not contiguous"):
        int8_prepack(q.t(), s)
    with pytest.raises(KernelPreconditionError, match="address % 64 = 24"):
        int8_prepack(misaligned(q), s)
    with pytest.raises(KernelPreconditionError, match="1 dims"):
        int8_prepack(q.reshape(-1), s)
    with pytest.raises(KernelPreconditionError, match="scales .*torch.float32"):
        int8_prepack(q, s.float())
    with pytest.raises(KernelPreconditionError, match="16 scales for 32 output rows"):
        int8_prepack(q, s[:16])
    with pytest.raises(KernelPreconditionError, match="kernels.owned"):
        int8_prepack(q, misaligned(s, 8))


def test_int8_prepack_packs_what_the_direct_torch_call_packed() -> None:
    import warnings

    q = torch.randint(-127, 128, (32, 64), dtype=torch.int8)
    s = torch.rand(32, dtype=torch.float64) / 100
    with warnings.catch_warnings():  # the call Int8Linear made before the wrapper
        warnings.simplefilter("ignore", UserWarning)
        direct = torch.ops.quantized.linear_prepack(torch._make_per_channel_quantized_tensor(
            q, s, torch.zeros(32, dtype=torch.long), 0), None)
    packed = int8_prepack(q, s)
    got, want = (torch.ops.quantized.linear_unpack(p)[0] for p in (packed, direct))
    assert torch.equal(got.int_repr(), q) and torch.equal(got.int_repr(), want.int_repr())
    assert torch.equal(got.q_per_channel_scales(), want.q_per_channel_scales())
    assert torch.equal(got.q_per_channel_zero_points(), want.q_per_channel_zero_points())
    x = torch.randn(3, 64)
    for reduce_range in (False, True):
        assert torch.equal(torch.ops.quantized.linear_dynamic(x, packed, reduce_range),
                           torch.ops.quantized.linear_dynamic(x, direct, reduce_range))
    # the module still takes a misaligned int8 view and float32 scales, as before
    lin = Int8Linear(misaligned(q), s.float(), mode="w8a8")
    assert torch.equal(lin.qweight, q) and torch.equal(lin.scales, s.float())


def test_modules_built_from_views_own_aligned_storage() -> None:
    q = torch.randint(-127, 128, (128, 128), dtype=torch.int8)
    s = torch.rand(128)
    emb = QuantEmbedding(8, {"qweight": misaligned(q), "scales": misaligned(s, 4)}, 128)
    head = emb.as_linear()  # the tied head shares the embedding's integers
    assert assert_all_owned(emb) == 2 and assert_all_owned(head) == 2
    assert head._q.data_ptr() == emb.qweight.data_ptr()  # still one copy in memory
    y = head(torch.randn(2, 5, 128))
    assert y.shape == (2, 5, 128) and torch.isfinite(y).all()


@pytest.mark.parametrize("recipe", [RTN(bits=8), RTN(bits=4, group_size=32),
                                    GPTQ(bits=4, group_size=64)], ids=["rtn8", "rtn4", "gptq4"])
def test_every_packed_buffer_is_aligned_after_compress_reload_and_shard(
        recipe, tiny_lm, calib, probe_ids, tmp_path) -> None:
    art = compress(tiny_lm, recipe, calib=calib, out=tmp_path / "art")
    assert assert_all_owned(art.model) > 0
    whole = load_artifact(art.path)
    assert assert_all_owned(whole.model) > 0
    assert torch.equal(whole.model(probe_ids), art.model(probe_ids))
    n = tiny_lm.config.num_layers
    for shard in (Shard(0, 1, n), Shard(1, n, n)):
        part = load_artifact(art.path, shard)
        assert assert_all_owned(part.model) > 0
