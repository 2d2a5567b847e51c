"""Converters from the compression package's packed modules to MatMulNBits weights.

The ONNX graph must compute what the artifact holds, so the artifact's integers, scales and
zeros are carried over exactly (no re-quantization):

* ``Int8Linear`` (symmetric per output channel, ``w = q * scale``, q in [-127, 127]) becomes
  8-bit MatMulNBits codes ``q + 128`` with the default zero point 128 and the channel's scale
  repeated for every block of the row.
* ``Int4Linear`` (public layout: low nibble first, ``w = (q - 8) * scale + zero`` per group,
  bf16 scales/zeros, inputs zero-padded to whole groups) becomes 4-bit MatMulNBits: with the
  integer zero points of an ``int`` zero-point grid (``zp = 8 - zero / scale``, exact), or
  with the default zero point 8 and, when a zero is non-zero, an exact ``float_zeros`` term.

Imported by :func:`edgeweave.runtime.engines.onnx_quant.weight_of` when the compression
package is installed.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from edgeweave.compress.modules import Int4Linear, Int8Linear
from edgeweave.compress.quant import integer_zero_points
from edgeweave.runtime.engines.onnx_quant import Packed, QuantSpec, pack, register_converter


def _bias(module: nn.Module) -> np.ndarray | None:
    b = getattr(module, "bias", None)
    return None if b is None else b.detach().float().numpy().copy()


def _block_for(k: int) -> int:
    """Largest MatMulNBits block that divides the width (scales repeat per block)."""
    return next((b for b in (256, 128, 64, 32, 16) if k % b == 0), 32)


@register_converter(Int8Linear)
def _from_int8(module: nn.Module, spec: QuantSpec | None) -> Packed:
    q = module.qweight.numpy().astype(np.int16)  # (N, K) in [-127, 127]
    scales = module.scales.float().numpy()  # (N,)
    n, k = q.shape
    block = _block_for(k)
    groups = -(-k // block)
    codes = np.full((n, groups * block), 128, np.uint8)  # padding codes mean 0
    codes[:, :k] = (q + 128).astype(np.uint8)
    return Packed(8, block, n, k, codes.reshape(n, groups, block),
                  np.repeat(scales[:, None], groups, axis=1).astype(np.float32), None,
                  _bias(module))


@register_converter(Int4Linear)
def _from_int4(module: nn.Module, spec: QuantSpec | None) -> Packed:
    g = module.group_size
    qweight = module.qweight.numpy()  # (N, K_padded / 2), low nibble = even column
    n = qweight.shape[0]
    k = module.in_features
    groups = -(-k // g)  # padded columns beyond the last group are never read
    qweight = np.ascontiguousarray(qweight[:, :groups * g // 2]).reshape(n, groups, g // 2)
    scales = module.scales.float()[:, :groups]
    zeros = module.zeros.float()[:, :groups]
    zp = fz = None
    if getattr(module, "zero_point", "float") == "int":  # w = (q - zp) * s natively
        zp = pack(integer_zero_points(scales, zeros, module.bits).numpy(), 4)
    elif bool(zeros.any()):
        fz = np.ascontiguousarray(zeros.numpy(), dtype=np.float32)
    return Packed(4, g, n, k, qweight, np.ascontiguousarray(scales.numpy(), dtype=np.float32),
                  zp, _bias(module), fz)
