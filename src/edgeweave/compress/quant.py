"""Quantization grids shared by RTN, GPTQ and SmoothQuant, written as the kernels compute.

int4 (also the container for int3): the grid is the one of torch's CPU int4 kernel
``_weight_int4pack_mm_for_cpu``: ``w = (q - 8) * scale + zero`` with ``q`` in ``[0, 15]`` and
``scale``/``zero`` in bfloat16, one pair per group of ``group_size`` input columns. Scales and
zeros are rounded to bfloat16 *before* the integers are chosen, so the weights we evaluate and
the weights the kernel multiplies with are the same numbers.

Zero points come in two kinds. ``float`` (the default of the first recipes): the asymmetric
zero is any bf16 number, ``zero = min + 8 * scale``. ``int``: the grid is the one ONNX
Runtime's MatMulNBits (and llama.cpp's Q4_1-style formats) compute natively,
``w = (q - zp) * scale`` with an integer ``zp`` in the grid's range; in the container it is
``zero = (8 - zp) * scale`` rounded to bf16, and ``zp = rint(8 - zero / scale)`` recovers the
integer exactly (the bf16 rounding moves ``zero / scale`` by at most 8 * 2^-9). A float zero
costs the ONNX graph an extra group-sum product per matmul (26 % of kernel time at g128).

int8: symmetric per output channel, ``w = q * scale`` with ``q`` in ``[-127, 127]``: what
fbgemm's prepacked dynamic linear reads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def levels(bits: int) -> tuple[int, int]:
    """(qmin, qmax) of a ``bits``-wide grid placed inside the int4 container around 8."""
    half = 1 << (bits - 1)
    return 8 - half, 8 + half - 1


def pad_columns(w: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the input dimension (last) up to a multiple of ``multiple``."""
    extra = (-w.shape[-1]) % multiple
    return F.pad(w, (0, extra)) if extra else w


ZERO_POINTS = ("float", "int")


def int4_qparams(w: torch.Tensor, bits: int, symmetric: bool, zero_point: str = "float"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero (bf16-exact, returned as fp32) for each row of ``w`` (..., group)."""
    qmin, qmax = levels(bits)
    w = w.float()
    if symmetric:
        amax = w.abs().amax(-1)
        scale = amax / (8 - qmin - 1) if bits > 1 else amax
        zero = torch.zeros_like(scale)
    else:
        mn = w.amin(-1).clamp(max=0)
        mx = w.amax(-1).clamp(min=0)
        scale = (mx - mn) / (qmax - qmin)
        zero = None
    scale = scale.clamp(min=1e-8).to(torch.bfloat16).float()
    if zero is None and zero_point == "int":  # w = (q - zp) * s, zp an integer of the grid
        zp = torch.clamp(torch.round(qmin - mn / scale), qmin, qmax)
        zero = ((8 - zp) * scale).to(torch.bfloat16).float()
    elif zero is None:  # w = (q - 8) * s + z reaches mn at q = qmin
        zero = (mn - (qmin - 8) * scale).to(torch.bfloat16).float()
    return scale, zero


def integer_zero_points(scales: torch.Tensor, zeros: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """The integer ``zp`` of an ``int`` zero-point grid (uint8, same shape as ``scales``)."""
    qmin, qmax = levels(bits)
    zp = 8 - zeros.float() / scales.float()
    return torch.clamp(torch.round(zp), qmin, qmax).to(torch.uint8)


def int4_quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int
                  ) -> torch.Tensor:
    """Integers in the int4 container for ``w`` (..., group) given per-row scale/zero."""
    qmin, qmax = levels(bits)
    return torch.clamp(torch.round((w - zero[..., None]) / scale[..., None]) + 8, qmin, qmax)


def int4_dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return (q - 8) * scale[..., None] + zero[..., None]


def rtn_int4(w: torch.Tensor, group_size: int, bits: int = 4, symmetric: bool = False,
             zero_point: str = "float") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest of an (N, K) matrix (K a multiple of ``group_size``).

    Returns ``q`` uint8 (N, K), ``scales`` and ``zeros`` fp32 (N, K // group_size).
    """
    n, k = w.shape
    wg = w.float().reshape(n, k // group_size, group_size)
    scale, zero = int4_qparams(wg, bits, symmetric, zero_point)
    q = int4_quantize(wg, scale, zero, bits)
    return q.reshape(n, k).to(torch.uint8), scale, zero


def dequant_int4(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    n, k = q.shape
    g = scales.shape[1]
    return int4_dequantize(q.float().reshape(n, g, k // g), scales.float(), zeros.float()
                           ).reshape(n, k)


def int8_scale(w: torch.Tensor) -> torch.Tensor:
    return (w.float().abs().amax(-1) / 127).clamp(min=1e-10)


def rtn_int8(w: torch.Tensor, bf16_scales: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: ``q`` int8 (N, K), ``scales`` fp32 (N,).

    ``bf16_scales`` rounds the scales *up* to bfloat16 first (what the weight-only kernel
    multiplies with), so the integers are chosen for the scales actually used.
    """
    scale = int8_scale(w)
    if bf16_scales:
        b = scale.to(torch.bfloat16)
        b = torch.where(b.float() < scale, (scale * (1 + 2 ** -8)).to(torch.bfloat16), b)
        scale = b.float()
    q = torch.clamp(torch.round(w.float() / scale[:, None]), -127, 127).to(torch.int8)
    return q, scale


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """(N, K) values in [0, 15] -> (N, K/2) uint8: column 2j in the low nibble, 2j+1 high."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_nibbles(p: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles`: (N, K/2) uint8 -> (N, K) uint8."""
    return torch.stack([p & 15, p >> 4], dim=-1).reshape(p.shape[0], -1)


def snr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-noise ratio in dB of ``approx`` against ``ref``."""
    ref, approx = ref.detach().double(), approx.detach().double()
    noise = (ref - approx).pow(2).sum().clamp(min=1e-30)
    return float(10 * torch.log10(ref.pow(2).sum() / noise))
