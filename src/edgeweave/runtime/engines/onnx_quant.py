"""Linear weights as ONNX Runtime wants them: dense fp32, or MatMulNBits blocks.

Every linear layer of a stage graph becomes a :class:`Dense` (fp32 ``(N, K)``) or a
:class:`Packed` weight in the ``com.microsoft.MatMulNBits`` layout: ``qweight`` of shape
``(N, K // group, group * bits // 8)`` (4-bit values two to a byte, low nibble first),
``scales`` ``(N, K // group)`` and unsigned zero points ``(N, ceil(K // group * bits / 8))``
(again two 4-bit values to a byte). The stored value ``q`` means ``(q - zp) * scale``
(``+ float_zero`` for grids with a real-valued offset per group, such as the compression
package's int4 ``w = (q - 8) * scale + zero``; the graph adds that term exactly with a small
group-sum product, because MatMulNBits' own float zero points are slow and not exact on CPU).

Where the weights come from is a registry keyed by module type, so a packed module of the
compression package converts its own scales and zero points (the ONNX graph then computes
what the artifact holds) while a plain ``nn.Linear`` is quantized here with round-to-nearest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from edgeweave.errors import ConfigError
from edgeweave.runtime.engines.onnx_spec import WEIGHT_FORMATS, QuantSpec  # noqa: F401


@dataclass(frozen=True)
class Dense:
    weight: np.ndarray  # (N, K) float32
    bias: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.weight.shape  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        return self.weight.nbytes


@dataclass(frozen=True)
class Packed:
    bits: int
    group_size: int
    n: int
    k: int
    qweight: np.ndarray  # (N, K // group, group * bits // 8) uint8
    scales: np.ndarray  # (N, K // group) float32
    zero_points: np.ndarray | None  # (N, ceil(K // group * bits / 8)) uint8, None = 2**(bits-1)
    bias: np.ndarray | None = None
    float_zeros: np.ndarray | None = None  # (N, groups) float32 added per group, or None

    @property
    def groups(self) -> int:
        return -(-self.k // self.group_size)

    @property
    def shape(self) -> tuple[int, int]:
        return self.n, self.k

    @property
    def nbytes(self) -> int:
        zp = 0 if self.zero_points is None else self.zero_points.nbytes
        fz = 0 if self.float_zeros is None else self.float_zeros.nbytes
        return self.qweight.nbytes + self.scales.nbytes + zp + fz

    def dequantize(self) -> np.ndarray:
        """(N, K) float32: what MatMulNBits multiplies by (for tests and error bounds)."""
        groups = self.groups
        q = unpack(self.qweight.reshape(self.n, -1), self.bits)[:, :groups * self.group_size]
        if self.zero_points is None:
            zp = np.full((self.n, groups), 2 ** (self.bits - 1), np.float32)
        else:
            zp = unpack(self.zero_points, self.bits)[:, :groups].astype(np.float32)
        q = q.reshape(self.n, groups, self.group_size).astype(np.float32)
        w = (q - zp[..., None]) * self.scales[..., None]
        if self.float_zeros is not None:
            w = w + self.float_zeros[..., None]
        return w.reshape(self.n, -1)[:, :self.k]


Weight = Dense | Packed


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ints ``(rows, cols)`` -> bytes ``(rows, ceil(cols * bits / 8))``."""
    q = q.astype(np.uint8)
    if bits == 8:
        return q
    if q.shape[1] % 2:
        q = np.concatenate([q, np.zeros((q.shape[0], 1), np.uint8)], axis=1)
    return (q[:, 0::2] & 0xF) | ((q[:, 1::2] & 0xF) << 4)


def unpack(b: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return b
    out = np.empty((b.shape[0], b.shape[1] * 2), np.uint8)
    out[:, 0::2], out[:, 1::2] = b & 0xF, b >> 4
    return out


def from_codes(q: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, bits: int,
               group_size: int, bias: np.ndarray | None = None) -> Packed:
    """Build a :class:`Packed` from unsigned codes ``(N, K)``, scales and zero points
    ``(N, K // group)`` (zero points None means symmetric, i.e. ``2**(bits-1)``)."""
    n, k = q.shape
    if k % group_size:
        raise ConfigError(f"group size {group_size} does not divide the input width {k}: "
                          "pick a group size that divides it (e.g. 32 or 64)")
    qweight = pack(q, bits).reshape(n, k // group_size, group_size * bits // 8)
    zp = None if zero_points is None else pack(zero_points.astype(np.uint8), bits)
    return Packed(bits, group_size, n, k, np.ascontiguousarray(qweight),
                  np.ascontiguousarray(scales, dtype=np.float32), zp, bias)


def rtn(w: np.ndarray, spec: QuantSpec, bias: np.ndarray | None = None) -> Packed:
    """Round-to-nearest block quantization of an ``(N, K)`` weight."""
    n, k = w.shape
    if k % spec.group_size:
        raise ConfigError(f"group size {spec.group_size} does not divide the input width {k}: "
                          "pick a group size that divides it (e.g. 32 or 64)")
    g = w.reshape(n, k // spec.group_size, spec.group_size).astype(np.float32)
    qmax = 2 ** spec.bits - 1
    if spec.symmetric:
        half = 2 ** (spec.bits - 1)
        scale = np.abs(g).max(-1) / (half - 1)
        scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
        q = np.clip(np.rint(g / scale[..., None]) + half, 0, qmax)
        zp = None
    else:
        lo, hi = np.minimum(g.min(-1), 0), np.maximum(g.max(-1), 0)
        scale = ((hi - lo) / qmax).astype(np.float32)
        scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
        zp = np.clip(np.rint(-lo / scale), 0, qmax)
        q = np.clip(np.rint(g / scale[..., None]) + zp[..., None], 0, qmax)
    return from_codes(q.reshape(n, k), scale, zp, spec.bits, spec.group_size, bias)


def concat(parts: list[Weight]) -> Weight:
    """Stack weights along the output dimension (fused QKV and gate/up projections)."""
    if all(isinstance(p, Dense) for p in parts):
        return Dense(np.concatenate([p.weight for p in parts]), _cat_bias(parts))
    if not all(isinstance(p, Packed) for p in parts):
        raise ConfigError("cannot fuse projections mixing dense and packed weights")
    if len({p.zero_points is None for p in parts}) > 1:  # some integer zero points, some not
        parts = [_float_zeros(p) for p in parts]
    first = parts[0]
    if any((p.bits, p.group_size, p.k) != (first.bits, first.group_size, first.k)
           for p in parts):
        raise ConfigError("fused projections need the same bits and group size")
    zp = None if first.zero_points is None else np.concatenate([p.zero_points for p in parts])
    fz = None
    if any(p.float_zeros is not None for p in parts):
        fz = np.concatenate([p.float_zeros if p.float_zeros is not None
                             else np.zeros(p.scales.shape, np.float32) for p in parts])
    return Packed(first.bits, first.group_size, sum(p.n for p in parts), first.k,
                  np.concatenate([p.qweight for p in parts]),
                  np.concatenate([p.scales for p in parts]), zp, _cat_bias(parts), fz)


def _float_zeros(p: Packed) -> Packed:
    """The same weights with the default zero point and the offset as a float term, exactly:
    ``(q - zp) * s = (q - 2^(b-1)) * s + (2^(b-1) - zp) * s``. A fused projection whose parts
    differ in zero-point kind (a recipe's ``int_zero`` naming q_proj but not k_proj) runs
    as one MatMulNBits with the correction instead of failing to fuse."""
    if p.zero_points is None:
        return p
    zp = unpack(p.zero_points, p.bits)[:, :p.groups].astype(np.float32)
    offset = (2 ** (p.bits - 1) - zp) * p.scales
    fz = offset if p.float_zeros is None else p.float_zeros + offset
    return replace(p, zero_points=None, float_zeros=np.ascontiguousarray(fz, np.float32))


def _cat_bias(parts: list[Weight]) -> np.ndarray | None:
    if all(p.bias is None for p in parts):
        return None
    return np.concatenate([p.bias if p.bias is not None else np.zeros(p.shape[0], np.float32)
                           for p in parts])


# -- where weights come from: a registry keyed by module type ----------------------------------
Converter = Callable[[nn.Module, "QuantSpec | None"], Weight]
_CONVERTERS: dict[type, Converter] = {}


def register_converter(*types: type) -> Callable[[Converter], Converter]:
    def deco(fn: Converter) -> Converter:
        for t in types:
            _CONVERTERS[t] = fn
        return fn
    return deco


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().float().cpu().numpy().copy()


@register_converter(nn.Linear)
def _from_linear(module: nn.Module, spec: QuantSpec | None) -> Weight:
    w, b = _np(module.weight), _np(module.bias)
    return Dense(w, b) if spec is None else rtn(w, spec, b)


def weight_of(module: nn.Module, spec: QuantSpec | None) -> Weight:
    """Weights of ``module`` for the graph; ``spec`` quantizes plain fp32 layers."""
    _load_plugins()
    for t in type(module).__mro__:
        if t in _CONVERTERS:
            return _CONVERTERS[t](module, spec)
    raise ConfigError(f"the ONNX exporter cannot read a {type(module).__name__} layer: "
                      "register a converter in edgeweave.runtime.engines.onnx_quant")


def _load_plugins() -> None:
    """Import converters for optional packed-module packages (compression) when present."""
    import contextlib
    import importlib

    with contextlib.suppress(ImportError):
        importlib.import_module("edgeweave.runtime.engines.onnx_compress")
