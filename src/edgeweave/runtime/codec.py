"""Hidden-state codecs: how a tensor between two stages becomes bytes on the wire.

A plan picks one codec per stage output (``types.CODECS``). Layouts (all little-endian,
``N`` = number of tokens = product of all dims but the last, ``H`` = last dim):

* ``fp32`` (id 0): ``N*H`` float32.
* ``fp16`` (id 1): ``N*H`` float16 (values beyond +-65504 saturate to inf, as IEEE does).
* ``int8`` (id 2): ``N`` float32 scales, then ``N*H`` int8; per-token absmax,
  ``scale = max|x| / 127``, ``q = round(x / scale)``, ``x' = q * scale``.
* ``ids``  (id 255): int32 token ids (first-stage input), never lossy.
* ``top64`` (id 3, logits only): per row the 64 largest values as float32, then their int32
  indices; decoding puts ``-inf`` everywhere else. Greedy decoding is unchanged and the
  last hop shrinks from ``4 * vocab`` bytes (196 KiB for a 49k vocabulary) to 512 bytes;
  sampling sees only the top 64 candidates.
* ``top1`` (id 4, logits only): per row the largest value as float32, then its int32 index
  (the lowest one among ties, as ``argmax`` picks); decoding puts ``-inf`` everywhere else.
  What a greedy request with nothing else to read asks for (``Session.configure_sampling``):
  one ``argmax`` on the node (about 10 us a 49k row, where finding the top 64 right after a
  run measured 0.19-0.26 ms of the stage's reply).

The shape travels in the frame header (see ``runtime.stage``), not in the payload. Tensors
are numpy arrays: a node that runs ONNX stages never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from math import prod

import numpy as np

from edgeweave.errors import ConfigError, RuntimeStageError


@dataclass(frozen=True)
class Codec:
    name: str
    id: int
    encode_np: Callable[[np.ndarray], bytes]
    decode_np: Callable[[memoryview, tuple[int, ...]], np.ndarray]
    size: Callable[[tuple[int, ...]], int]
    lossless: bool

    def encode(self, x: np.ndarray) -> bytes:
        return self.encode_np(np.ascontiguousarray(x))

    def decode(self, data: bytes | memoryview, shape: tuple[int, ...]) -> np.ndarray:
        shape = tuple(shape)
        if len(data) != self.size(shape):
            raise RuntimeStageError(f"{self.name} payload of {len(data)} bytes does not match "
                                    f"shape {shape} ({self.size(shape)} bytes): peer out of sync")
        return self.decode_np(memoryview(data), shape)


_BY_NAME: dict[str, Codec] = {}
_BY_ID: dict[int, Codec] = {}


def register(codec: Codec) -> Codec:
    _BY_NAME[codec.name] = codec
    _BY_ID[codec.id] = codec
    return codec


def get(name_or_id: str | int) -> Codec:
    table = _BY_ID if isinstance(name_or_id, int) else _BY_NAME
    try:
        return table[name_or_id]
    except KeyError:
        raise ConfigError(f"unknown codec {name_or_id!r}: choose one of "
                          f"{', '.join(sorted(_BY_NAME))}") from None


def _tokens(shape: tuple[int, ...]) -> int:
    return prod(shape[:-1]) if shape else 1


def _plain(name: str, cid: int, dtype: str, lossless: bool) -> Codec:
    dt = np.dtype(dtype)

    def enc(a: np.ndarray) -> bytes:
        return a.astype(dt, copy=False).tobytes()

    def dec(buf: memoryview, shape: tuple[int, ...]) -> np.ndarray:
        return np.frombuffer(buf, dtype=dt).astype(np.float32).reshape(shape)

    return Codec(name, cid, enc, dec, lambda s: prod(s) * dt.itemsize, lossless)


def _int8_encode(a: np.ndarray) -> bytes:
    a = a.astype(np.float32, copy=False)
    flat = a.reshape(-1, a.shape[-1])  # (N, H)
    scale = np.abs(flat).max(axis=1) / 127.0
    safe = np.where(scale > 0, scale, 1.0)  # all-zero tokens encode as zeros
    q = np.clip(np.rint(flat / safe[:, None]), -127, 127).astype(np.int8)
    return scale.astype("<f4").tobytes() + q.tobytes()


def _int8_decode(buf: memoryview, shape: tuple[int, ...]) -> np.ndarray:
    n = _tokens(shape)
    scale = np.frombuffer(buf[: 4 * n], dtype="<f4")
    q = np.frombuffer(buf[4 * n:], dtype=np.int8).reshape(n, shape[-1])
    return (q.astype(np.float32) * scale[:, None]).reshape(shape)


def _ids_decode(buf: memoryview, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(buf, dtype="<i4").astype(np.int64).reshape(shape)


TOPK = 64


def top_indices(row: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values of a 1-D ``row`` (in no order), as
    ``np.argpartition(row, -k)[-k:]`` finds them, in 35 us a 49k-vocabulary row against
    390 (0.4-0.6 ms on a node's last stage beside its engine: 5 % of a token). Split the row into
    ``G >= k`` groups (strided, so one vectorised max over rows finds every group's
    maximum); the ``k``-th largest group maximum is a floor: ``k`` groups each hold a value
    at or above it, so the ``k`` largest values all are, and only they and values tied near
    them pass it."""
    v = row.shape[0]
    groups = v // k
    if groups < max(k, 16):  # a short row: one partition costs less than the grouping
        return np.argpartition(row, -k)[-k:]
    body = groups * k
    maxima = row[:body].reshape(k, groups).max(axis=0)
    if body < v:  # the ragged tail is one more group
        maxima = np.append(maxima, row[body:].max())
    floor = np.partition(maxima, -k)[-k]
    cand = np.flatnonzero(row >= floor)
    if cand.size < k:  # NaN compares false everywhere: the plain partition copes
        return np.argpartition(row, -k)[-k:]
    return cand[np.argpartition(row[cand], -k)[-k:]]


def _topk_encode(a: np.ndarray) -> bytes:
    flat = np.ascontiguousarray(a.reshape(-1, a.shape[-1]), dtype=np.float32)
    k = min(TOPK, flat.shape[1])
    idx = np.stack([top_indices(row, k) for row in flat]) if len(flat) else \
        np.zeros((0, k), np.int64)
    vals = np.take_along_axis(flat, idx, axis=1)
    return vals.astype("<f4").tobytes() + idx.astype("<i4").tobytes()


def _topk_decode(buf: memoryview, shape: tuple[int, ...]) -> np.ndarray:
    n, k = _tokens(shape), min(TOPK, shape[-1])
    vals = np.frombuffer(buf[: 4 * n * k], dtype="<f4").reshape(n, k)
    idx = np.frombuffer(buf[4 * n * k:], dtype="<i4").reshape(n, k)
    out = np.full((n, shape[-1]), -np.inf, dtype=np.float32)
    np.put_along_axis(out, idx.astype(np.int64), vals, axis=1)
    return out.reshape(shape)


def _top1_encode(a: np.ndarray) -> bytes:
    flat = a.reshape(-1, a.shape[-1]).astype(np.float32, copy=False)
    idx = flat.argmax(axis=1)
    vals = flat[np.arange(len(flat)), idx]
    return vals.astype("<f4").tobytes() + idx.astype("<i4").tobytes()


def _top1_decode(buf: memoryview, shape: tuple[int, ...]) -> np.ndarray:
    n = _tokens(shape)
    vals = np.frombuffer(buf[: 4 * n], dtype="<f4")
    idx = np.frombuffer(buf[4 * n:], dtype="<i4").astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= shape[-1]):
        raise RuntimeStageError(f"a top1 index is outside the {shape[-1]}-token vocabulary")
    out = np.full((n, shape[-1]), -np.inf, dtype=np.float32)
    out[np.arange(n), idx] = vals
    return out.reshape(shape)


FP32 = register(_plain("fp32", 0, "<f4", lossless=True))
FP16 = register(_plain("fp16", 1, "<f2", lossless=False))
INT8 = register(Codec("int8", 2, _int8_encode, _int8_decode,
                      lambda s: 4 * _tokens(s) + prod(s), lossless=False))
TOP64 = register(Codec("top64", 3, _topk_encode, _topk_decode,
                       lambda s: 8 * _tokens(s) * min(TOPK, s[-1]), lossless=False))
TOP1 = register(Codec("top1", 4, _top1_encode, _top1_decode, lambda s: 8 * _tokens(s),
                      lossless=False))
IDS = register(Codec("ids", 255, lambda a: a.astype("<i4").tobytes(), _ids_decode,
                     lambda s: 4 * prod(s), lossless=True))
