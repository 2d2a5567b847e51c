"""Packed run-time modules: drop-in replacements for ``nn.Linear`` / ``nn.Embedding``.

Every module here keeps its weights compressed in memory and is registered under a ``kind``
so that artifacts can save (``state()`` + ``meta()``) and rebuild (``from_state``) it.

``Int8Linear`` (kind ``int8``)
    int8 weights, symmetric per output channel (``w = q * scale``). ``mode="w8a16"``: the int8
    matrix is held as is and run by ``_weight_int8pack_mm`` with bf16 activations and bf16
    scales (RTN int8). ``mode="w8a8"``: prepacked for fbgemm's ``linear_dynamic``, which
    also quantizes activations per tensor (SmoothQuant).
    Artifact tensors: ``qweight`` int8 (out, in), ``scales`` (out,), optional ``bias``.

``Int4Linear`` (kind ``int4``) -- the public int4 layout (also read by the ONNX exporter):
    * ``qweight`` uint8 (out, in_padded / 2): two 4-bit values per byte, input column ``2j``
      in the LOW nibble and ``2j + 1`` in the HIGH nibble, row-major over output channels.
    * ``scales`` and ``zeros`` bfloat16 (out, in_padded / group_size): one pair per group of
      ``group_size`` consecutive input columns.
    * dequantization: ``w[n, k] = (q[n, k] - 8) * scales[n, k // g] + zeros[n, k // g]``
      (symmetric recipes have ``zeros == 0``; int3 uses q in [4, 11] of the same container).
      For ONNX MatMulNBits (``w = (q - zp) * scale``) use the float zero point
      ``zp = 8 - zeros / scales``.
    * ``in_features`` may be smaller than ``in_padded`` (zero-padded columns, ``pad=True``
      recipes); inputs are padded with zeros at run time.
    In memory the weight is held only in the layout of torch's CPU int4 kernel
    (``_convert_weight_to_int4pack_for_cpu``, a blocked permutation of the same nibbles) and
    run with ``_weight_int4pack_mm_for_cpu`` on bfloat16 activations. ``qweight`` is
    reconstructed from it on demand (saving, export), so memory holds one 4-bit copy.

``QuantEmbedding`` (kind ``qembed``): an int8 or int4 embedding table (same layouts as above,
    one row per token) that also serves as the tied ``lm_head`` through ``as_linear()``.

``LowRankLinear`` (kind ``lowrank``): ``x @ a.T @ b.T`` with ``a`` (rank, in), ``b`` (out, rank).

``SparseStorage`` (kind ``sparse``): storage only. A bitmask (1 bit per weight) plus the
    non-zero values in fp16; it loads back into a dense ``nn.Linear``. Sparse models are
    smaller on disk but run with dense kernels, at dense speed.

Plain ``nn.Linear`` (kind ``linear``) is saved in fp16 with its (possibly shrunk) shape.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeweave.compress.kernels import (
    int4_pack,
    int4_weight_mm,
    int8_dynamic_mm,
    int8_prepack,
    int8_unpack,
    int8_weight_mm,
    owned,
)
from edgeweave.compress.quant import (
    dequant_int4,
    pack_nibbles,
    unpack_nibbles,
)

KINDS: dict[str, Callable[[dict[str, torch.Tensor], dict[str, Any]], nn.Module]] = {}


def register_kind(kind: str):
    def deco(fn):
        KINDS[kind] = fn
        return fn
    return deco


def _reduce_range() -> bool:
    """fbgemm needs 7-bit activations on CPUs without VNNI to avoid int16 saturation."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return not ("avx512_vnni" in flags or "avx_vnni" in flags)


REDUCE_RANGE = _reduce_range()


class Int8Linear(nn.Module):
    """int8 weights (symmetric per output channel) on one of two real kernels.

    ``mode="w8a16"`` (RTN int8): aten's int8pack matmul (``kernels.int8_weight_mm``) multiplies bf16
    activations by the int8 matrix held as is, with bf16 per-channel scales: weight-only,
    accurate. ``mode="w8a8"`` (SmoothQuant): fbgemm's prepacked dynamic linear, which also
    quantizes activations per tensor (7-bit without VNNI): needs smoothed activations.
    """

    kind = "int8"

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None,
                 mode: str = "w8a16") -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.mode = mode
        if mode == "w8a8":
            # owned(): cast, and copy a view (a tied table, an mmap) into storage the
            # wrapper's checks accept; fbgemm then packs a copy of its own
            self._packed = int8_prepack(owned(q, torch.int8), owned(scales, torch.float64))
        else:
            # owned(): the kernel segfaults on AVX-512 when a buffer is not 64-byte aligned
            self.register_buffer("_q", owned(q, torch.int8), persistent=False)
            self.register_buffer("_s", owned(scales, torch.bfloat16), persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.float(), requires_grad=False)

    @property
    def qweight(self) -> torch.Tensor:
        if self.mode == "w8a8":
            return int8_unpack(self._packed)[0]
        return self._q

    @property
    def scales(self) -> torch.Tensor:
        if self.mode == "w8a8":
            return int8_unpack(self._packed)[1]
        return self._s.float()

    def dequantized(self) -> torch.Tensor:
        return self.qweight.float() * self.scales[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "w8a8":
            y = int8_dynamic_mm(x, self._packed, REDUCE_RANGE)
        else:
            shape = x.shape
            y = int8_weight_mm(x.reshape(-1, shape[-1]), self._q, self._s)
            y = y.float().reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def nbytes(self) -> int:
        return self.out_features * self.in_features + 4 * self.out_features

    def state(self) -> dict[str, torch.Tensor]:
        d = {"qweight": self.qweight, "scales": self.scales}
        if self.bias is not None:
            d["bias"] = self.bias.detach().half()
        return d

    def meta(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "mode": self.mode}

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 per-channel {self.mode}"


@register_kind("int8")
def _int8_from_state(t: dict[str, torch.Tensor], meta: dict[str, Any]) -> nn.Module:
    return Int8Linear(t["qweight"], t["scales"], t.get("bias"), meta.get("mode", "w8a16"))


@functools.lru_cache(maxsize=16)  # a model has a handful of shapes; saving asks per linear
def _int4_permutation(n: int, k: int) -> torch.Tensor:
    """Index map of the kernel layout: kernel_nibbles.flatten() == public.flatten()[perm].

    Found by packing the bits of each position's index (4 at a time), so it follows whatever
    blocking this torch build uses instead of hard-coding it.
    """
    idx = torch.arange(n * k, dtype=torch.int64).reshape(n, k)
    perm = torch.zeros(n * k, dtype=torch.int64)
    bits = max(int(n * k - 1).bit_length(), 1)
    for b in range(0, bits, 4):
        plane = ((idx >> b) & 15).to(torch.int32)
        packed = int4_pack(plane)
        perm |= unpack_nibbles(packed).reshape(-1).to(torch.int64) << b
    return perm


class Int4Linear(nn.Module):
    """See the module docstring for the public layout (qweight, scales, zeros, group_size)."""

    kind = "int4"

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 group_size: int, in_features: int, bits: int = 4,
                 bias: torch.Tensor | None = None, zero_point: str = "float") -> None:
        super().__init__()
        self.out_features = qweight.shape[0]
        self.in_padded = qweight.shape[1] * 2
        self.in_features, self.group_size, self.bits = in_features, group_size, bits
        # "int": zeros are (8 - zp) * scale for integer zp (quant.py), which ONNX reads as
        # MatMulNBits zero points; "float": any bf16 zero
        self.zero_point = zero_point
        # the kernel wants out % 16 == 0: extra rows are zeros (q = 8, zero = 0), sliced off
        self.out_padded = -(-self.out_features // 16) * 16
        extra = self.out_padded - self.out_features
        q = F.pad(unpack_nibbles(qweight).to(torch.int32), (0, 0, 0, extra), value=8)
        scales = F.pad(scales.float(), (0, 0, 0, extra), value=1.0)
        zeros = F.pad(zeros.float(), (0, 0, 0, extra))
        self.register_buffer("_packed", int4_pack(q), persistent=False)
        # (groups, out, 2) bf16: the kernel's own argument
        sz = owned(torch.stack([scales.t(), zeros.t()], dim=-1), torch.bfloat16)
        self.register_buffer("_scales_zeros", sz, persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.float(), requires_grad=False)

    @classmethod
    def from_ints(cls, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                  group_size: int, in_features: int, bits: int = 4,
                  bias: torch.Tensor | None = None, zero_point: str = "float") -> Int4Linear:
        return cls(pack_nibbles(q), scales, zeros, group_size, in_features, bits, bias,
                   zero_point)

    @property
    def scales(self) -> torch.Tensor:
        return self._scales_zeros[..., 0].t()[:self.out_features].contiguous()

    @property
    def zeros(self) -> torch.Tensor:
        return self._scales_zeros[..., 1].t()[:self.out_features].contiguous()

    @property
    def qweight(self) -> torch.Tensor:
        n, k = self.out_padded, self.in_padded
        kernel = unpack_nibbles(self._packed).reshape(-1)
        public = torch.empty(n * k, dtype=torch.uint8)
        public[_int4_permutation(n, k)] = kernel
        return pack_nibbles(public.reshape(n, k)[:self.out_features])

    def dequantized(self) -> torch.Tensor:
        w = dequant_int4(unpack_nibbles(self.qweight), self.scales.float(), self.zeros.float())
        return w[:, :self.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.in_padded != self.in_features:
            x2 = F.pad(x2, (0, self.in_padded - self.in_features))
        y = int4_weight_mm(x2, self._packed, self.group_size, self._scales_zeros)
        y = y[:, :self.out_features].float().reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def nbytes(self) -> int:
        return self.out_features * self.in_padded // 2 + self._scales_zeros.numel() * 2

    def state(self) -> dict[str, torch.Tensor]:
        d = {"qweight": self.qweight, "scales": self.scales, "zeros": self.zeros}
        if self.bias is not None:
            d["bias"] = self.bias.detach().half()
        return d

    def meta(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "group_size": self.group_size, "bits": self.bits, "zero_point": self.zero_point}

    def extra_repr(self) -> str:
        return (f"in={self.in_features} (padded {self.in_padded}), out={self.out_features}, "
                f"int{self.bits} g{self.group_size}")


@register_kind("int4")
def _int4_from_state(t: dict[str, torch.Tensor], meta: dict[str, Any]) -> nn.Module:
    return Int4Linear(t["qweight"], t["scales"], t["zeros"], meta["group_size"],
                      meta["in_features"], meta.get("bits", 4), t.get("bias"),
                      meta.get("zero_point", "float"))


class QuantEmbedding(nn.Module):
    """Token embedding kept in int8 (per-row scale) or the public int4 layout."""

    kind = "qembed"

    def __init__(self, bits: int, tensors: dict[str, torch.Tensor], dim: int,
                 group_size: int = 0, zero_point: str = "float") -> None:
        super().__init__()
        self.bits, self.dim, self.group_size = bits, dim, group_size
        self.zero_point = zero_point
        for name, t in tensors.items():
            # owned(): the int8 table doubles as the tied head's kernel weight (as_linear)
            self.register_buffer(name, owned(t))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.bits == 8:
            return self.qweight[ids].float() * self.scales[ids].unsqueeze(-1)
        flat = ids.reshape(-1)
        w = dequant_int4(unpack_nibbles(self.qweight[flat]), self.scales[flat].float(),
                         self.zeros[flat].float())[:, :self.dim]
        return w.reshape(*ids.shape, self.dim)

    def as_linear(self) -> nn.Module:
        """The tied output head over the same integers (packed for the matmul kernel)."""
        if self.bits == 8:  # shares the int8 table: no second copy in memory
            return Int8Linear(self.qweight, self.scales)
        return Int4Linear(self.qweight, self.scales, self.zeros, self.group_size, self.dim,
                          self.bits, zero_point=self.zero_point)

    @property
    def weight(self) -> torch.Tensor:  # dequantized view for code that inspects embeddings
        return self.forward(torch.arange(self.qweight.shape[0]))

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def state(self) -> dict[str, torch.Tensor]:
        return dict(self.named_buffers())

    def meta(self) -> dict[str, Any]:
        return {"bits": self.bits, "dim": self.dim, "group_size": self.group_size,
                "zero_point": self.zero_point}


@register_kind("qembed")
def _qembed_from_state(t: dict[str, torch.Tensor], meta: dict[str, Any]) -> nn.Module:
    return QuantEmbedding(meta["bits"], t, meta["dim"], meta.get("group_size", 0),
                          meta.get("zero_point", "float"))


class LowRankLinear(nn.Module):
    kind = "lowrank"

    def __init__(self, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.rank, self.in_features = a.shape
        self.out_features = b.shape[0]
        self.a = nn.Parameter(a.float().contiguous(), requires_grad=False)  # (rank, in)
        self.b = nn.Parameter(b.float().contiguous(), requires_grad=False)  # (out, rank)
        self.bias = None if bias is None else nn.Parameter(bias.float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.a), self.b, self.bias)

    def dequantized(self) -> torch.Tensor:
        return self.b @ self.a

    def nbytes(self) -> int:
        return 2 * (self.a.numel() + self.b.numel())

    def state(self) -> dict[str, torch.Tensor]:
        d = {"a": self.a.detach().half(), "b": self.b.detach().half()}
        if self.bias is not None:
            d["bias"] = self.bias.detach().half()
        return d

    def meta(self) -> dict[str, Any]:
        return {"rank": self.rank, "in_features": self.in_features,
                "out_features": self.out_features}


@register_kind("lowrank")
def _lowrank_from_state(t: dict[str, torch.Tensor], meta: dict[str, Any]) -> nn.Module:
    return LowRankLinear(t["a"], t["b"], t.get("bias"))


def linear_state(m: nn.Linear, sparse: bool) -> tuple[str, dict[str, torch.Tensor], dict[str, Any]]:
    """How a plain linear is stored: dense fp16, or bitmask + non-zero values when sparse."""
    w = m.weight.detach()
    meta = {"in_features": m.in_features, "out_features": m.out_features}
    bias = {} if m.bias is None else {"bias": m.bias.detach().half()}
    if not sparse:
        return "linear", {"weight": w.half(), **bias}, meta
    mask = w != 0
    bits = np.packbits(mask.reshape(-1).numpy())
    return "sparse", {"mask": torch.from_numpy(bits), "values": w[mask].half(), **bias}, meta


@register_kind("linear")
def _linear_from_state(t: dict[str, torch.Tensor], meta: dict[str, Any]) -> nn.Module:
    m = nn.Linear(meta["in_features"], meta["out_features"], bias="bias" in t, device="meta")
    m.weight = nn.Parameter(t["weight"].float(), requires_grad=False)
    if "bias" in t:
        m.bias = nn.Parameter(t["bias"].float(), requires_grad=False)
    return m


@register_kind("sparse")
def _sparse_from_state(t: dict[str, torch.Tensor], meta: dict[str, Any]) -> nn.Module:
    out_f, in_f = meta["out_features"], meta["in_features"]
    mask = np.unpackbits(t["mask"].numpy(), count=out_f * in_f).astype(bool)
    w = torch.zeros(out_f * in_f)
    w[torch.from_numpy(mask)] = t["values"].float()
    return _linear_from_state({"weight": w.reshape(out_f, in_f),
                               **({"bias": t["bias"]} if "bias" in t else {})}, meta)


def set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    owner = root.get_submodule(parent) if parent else root
    if isinstance(owner, nn.ModuleDict):
        owner[leaf] = new
    else:
        setattr(owner, leaf, new)
