"""The one place that calls torch's private low-bit CPU kernels, with their preconditions.

(That includes building fbgemm's prepacked int8 weight, :func:`int8_prepack`, which goes
through the private ``torch._make_per_channel_quantized_tensor``.)

``torch.ops.aten._weight_int8pack_mm`` and ``_weight_int4pack_mm_for_cpu`` read their
buffers with vector loads that assume what the Python signature does not say. On AMD Zen 4
(AVX-512 VNNI/BF16) ``_weight_int8pack_mm`` segfaults inside an OpenMP worker when the int8
weight (or the bf16 input) does not start on a 64-byte boundary, e.g. a view into a shared
or memory-mapped tensor at offset 24; AVX2-only CPUs run the same call without complaint.
So every buffer a kernel reads goes through :func:`owned` (contiguous, 64-byte-aligned
storage of its own) when a module is built, and every call checks dtype, rank, shapes,
contiguity and alignment here and raises :class:`KernelPreconditionError` with the fix,
instead of handing the CPU something it may crash on. Inputs, which are transient, are
copied into aligned storage when they are not already.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from edgeweave.errors import EdgeweaveError

ALIGN = 64  # bytes: one cache line, the widest vector load (AVX-512) the kernels issue


class KernelPreconditionError(EdgeweaveError):
    """A buffer handed to a low-bit kernel breaks one of the kernel's preconditions."""


def is_aligned(t: torch.Tensor, align: int = ALIGN) -> bool:
    return t.data_ptr() % align == 0


def owned(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``t`` (cast to ``dtype``) in contiguous storage that starts on a 64-byte boundary.

    Returns ``t`` itself when it already is; otherwise a copy. The copy never shares memory
    with ``t``: a view into a bigger tensor (a tied table, an mmap of a safetensors file)
    is exactly what must not reach a kernel.
    """
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    if t.is_contiguous() and is_aligned(t) and t.storage_offset() == 0:
        return t
    out = torch.empty(t.shape, dtype=t.dtype)
    if not is_aligned(out):  # torch's CPU allocator aligns to 64; be exact anyway
        nbytes = t.numel() * t.element_size()
        raw = torch.empty(nbytes + ALIGN, dtype=torch.uint8)
        off = (-raw.data_ptr()) % ALIGN
        out = raw[off:off + nbytes].view(t.dtype).view(t.shape)
    out.copy_(t)
    return out


def _require(t: torch.Tensor, name: str, dtype: torch.dtype, ndim: int, kernel: str) -> None:
    problems = []
    if t.dtype != dtype:
        problems.append(f"dtype {t.dtype} (needs {dtype})")
    if t.dim() != ndim:
        problems.append(f"{t.dim()} dims (needs {ndim})")
    if t.device.type != "cpu":
        problems.append(f"device {t.device} (needs cpu)")
    if not t.is_contiguous():
        problems.append("not contiguous")
    if not is_aligned(t):
        problems.append(f"data at address % {ALIGN} = {t.data_ptr() % ALIGN}")
    if problems:
        raise KernelPreconditionError(
            f"{kernel}: {name} {tuple(t.shape)} is {', '.join(problems)}; build the module "
            f"through edgeweave.compress.modules (it copies buffers with kernels.owned) instead "
            "of assigning its buffers by hand")


def _input(x: torch.Tensor, k: int, kernel: str) -> torch.Tensor:
    if x.dim() != 2 or x.shape[1] != k:
        raise KernelPreconditionError(
            f"{kernel}: input {tuple(x.shape)} must be 2-D (rows, {k}): reshape it to "
            f"(-1, {k}) first")
    return owned(x, torch.bfloat16)


def int8_weight_mm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """bf16 ``x`` (M, K) times int8 ``qweight`` (N, K) with bf16 per-row ``scales`` (N,)."""
    kernel = "int8 weight matmul"
    _require(qweight, "qweight", torch.int8, 2, kernel)
    _require(scales, "scales", torch.bfloat16, 1, kernel)
    n, k = qweight.shape
    if scales.shape[0] != n:
        raise KernelPreconditionError(f"{kernel}: {scales.shape[0]} scales for {n} output "
                                      "rows: the artifact's scales do not match its weight")
    return torch.ops.aten._weight_int8pack_mm(_input(x, k, kernel), qweight, scales)


def int4_pack(q: torch.Tensor) -> torch.Tensor:
    """int32 values in [0, 15] (N, K) -> torch's CPU int4 kernel layout (aligned, owned)."""
    kernel = "int4 pack"
    if q.dim() != 2 or q.shape[0] % 16 or q.shape[1] % 2:
        raise KernelPreconditionError(f"{kernel}: weight {tuple(q.shape)} needs 2 dims, rows a "
                                      "multiple of 16 and an even column count: pad it first")
    q = owned(q, torch.int32)
    return owned(torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))


def int4_weight_mm(x: torch.Tensor, packed: torch.Tensor, group_size: int,
                   scales_zeros: torch.Tensor) -> torch.Tensor:
    """bf16 ``x`` (M, K) times a packed int4 weight; ``scales_zeros`` (K / g, N, 2) bf16."""
    kernel = "int4 weight matmul"
    _require(packed, "packed weight", torch.uint8, 2, kernel)
    _require(scales_zeros, "scales_zeros", torch.bfloat16, 3, kernel)
    groups, n, two = scales_zeros.shape
    k = groups * group_size
    if two != 2 or packed.shape[0] != n or packed.numel() * 2 != n * k:
        raise KernelPreconditionError(
            f"{kernel}: packed {tuple(packed.shape)} and scales_zeros "
            f"{tuple(scales_zeros.shape)} disagree for group size {group_size}: the artifact "
            "is inconsistent, re-compress it")
    return torch.ops.aten._weight_int4pack_mm_for_cpu(_input(x, k, kernel), packed, group_size,
                                                     scales_zeros)


def int8_prepack(qweight: torch.Tensor, scales: torch.Tensor) -> Any:
    """int8 ``qweight`` (N, K) with float64 per-row ``scales`` (N,) -> fbgemm's prepacked
    weight for ``torch.ops.quantized.linear_dynamic`` (symmetric: every zero point is 0).

    Reached through torch's private ``_make_per_channel_quantized_tensor``, which takes any
    tensor it is given: a wrong dtype or a scale count that does not match the rows fails
    deep in fbgemm, or not at all."""
    kernel = "int8 prepack"
    _require(qweight, "qweight", torch.int8, 2, kernel)
    _require(scales, "scales", torch.float64, 1, kernel)
    n = qweight.shape[0]
    if scales.shape[0] != n:
        raise KernelPreconditionError(f"{kernel}: {scales.shape[0]} scales for {n} output "
                                      "rows: the artifact's scales do not match its weight")
    with warnings.catch_warnings():  # torch flags quantized tensors as deprecated API
        warnings.simplefilter("ignore", UserWarning)
        qt = torch._make_per_channel_quantized_tensor(
            qweight, scales, torch.zeros(n, dtype=torch.long), 0)
        return torch.ops.quantized.linear_prepack(qt, None)


def int8_unpack(packed: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The int8 weight (N, K) and float32 per-row scales (N,) of an :func:`int8_prepack`
    result (what an artifact stores)."""
    qt = torch.ops.quantized.linear_unpack(packed)[0]
    return qt.int_repr(), qt.q_per_channel_scales().float()


def int8_dynamic_mm(x: torch.Tensor, packed: Any, reduce_range: bool) -> torch.Tensor:
    """float ``x`` (..., K) times an :func:`int8_prepack` weight, activations quantized per
    call (fbgemm's dynamic int8 linear); ``x`` is handed over as contiguous float32, the
    only layout the kernel reads correctly."""
    return torch.ops.quantized.linear_dynamic(x.float().contiguous(), packed, reduce_range)

