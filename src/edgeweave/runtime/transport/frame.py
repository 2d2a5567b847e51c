"""Versioned binary frame exchanged between the coordinator and stage nodes (schema v1).

One frame per gRPC stream message (generic handlers, no protoc), behind a u32 length on the
node's frame socket (``frame_socket``), or passed as an object by the in-process transport.
All integers little-endian.

========  ====  =============================================================
offset    size  field
========  ====  =============================================================
0         2     magic ``b"EW"``
2         1     version (``1``); a node answers other versions with ERROR
3         1     op (:class:`Op`)
4         1     payload codec id (``runtime.codec``: 0 fp32, 1 fp16, 2 int8, 255 ids;
                254 = UTF-8 JSON or text)
5         1     reply codec id: how a FORWARD's output hidden states should be encoded
6         1     ndim of the payload tensor (0 for none, at most :data:`MAX_NDIM`)
7         1     length K of the stage key (UTF-8, e.g. ``"0-10:fp32"``)
8         1     length S of the session id (UTF-8)
9         1     reserved (must be 0)
10        4     seq: request number; a response echoes its request's seq
14        4     arg: OPEN max_len; TRUNCATE length; FORWARD cache length expected
                before the step (a mismatch is refused, so tokens are never lost or
                doubled); OK after FORWARD: compute time in microseconds; ERROR: code
18        4*nd  shape (u32 per dim)
..        K     stage key
..        S     session id
..        rest  payload
========  ====  =============================================================

Requests: OPEN (payload: none, or JSON ``{"adapter": name}``: the session runs that LoRA
adapter), FORWARD, TRUNCATE, CLOSE, LOAD (payload: JSON ``EngineConfig`` fields), INFO, PING,
FORWARD_BATCH: one step of several sessions of one stage (the frame's stage key) in one engine
call; its payload is a batch (:func:`pack_batch`: u32 count, then per item a u32 length and a
whole packed FORWARD frame) and so is the OK's (one OK or ERROR per item, in order), so a
session evicted or out of sync fails alone. ADAPTER (payload: one stage's factors of a LoRA
adapter, ``runtime.adapters.to_bytes``). SAVE_PREFIX (payload: JSON ``{"prefix": id}``, arg:
length): keep the first ``arg`` tokens of the session's cache as the prefix donor ``id``
(``runtime.prefix``; its OK carries JSON ``{"bytes": n}``); LOAD_PREFIX (same payload and
arg): make the open session hold the first ``arg`` tokens of donor ``id``. UNLOAD (the
frame's stage key): free a stage no session or donor holds (its OK carries JSON
``{"unloaded": bool}``: false while one does, or while it is being built). Responses: OK
(FORWARD: the output tensor; INFO/LOAD: JSON) or ERROR (payload: the message, arg:
:class:`ErrorCode`).

:meth:`Frame.unpack` checks every announced length against the bytes received before it
reads or allocates anything, and raises only :class:`FrameError`; a node answers a malformed
frame with ERROR ``BAD_FRAME`` (echoing its seq when the header was readable) and keeps the
stream open for the next one.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from edgeweave.errors import RuntimeStageError

MAGIC = b"EW"
VERSION = 1
JSON_CODEC = 254
# Tensors on the wire are (B, T) ids, (B, T, H) hidden states or (B, vocab) logits; 8 leaves
# room for new layouts while keeping a hostile header from announcing 255 dims.
MAX_NDIM = 8
_HEAD = struct.Struct("<2sBBBBBBBBII")  # 18 bytes
_U32 = 2**32 - 1


class FrameError(RuntimeStageError):
    """Bytes that are not a well-formed frame; ``seq`` is the request's number when its
    header could be read (so the answer reaches the right caller), else None."""

    def __init__(self, message: str, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq


class Op(IntEnum):
    OPEN = 1
    FORWARD = 2
    TRUNCATE = 3
    CLOSE = 4
    LOAD = 5
    INFO = 6
    PING = 7
    FORWARD_BATCH = 8
    ADAPTER = 9
    SAVE_PREFIX = 10
    LOAD_PREFIX = 11
    UNLOAD = 12  # free a stage no plan uses any more (refused while it holds sessions)
    # a FORWARD whose last stage answers the logits of every position (1, T, vocab), not
    # only the last: speculative decoding scores k drafted tokens in one step
    VERIFY = 13
    OK = 16
    ERROR = 17


_OPS = frozenset(int(o) for o in Op)

class ErrorCode(IntEnum):
    GENERIC = 1
    SESSION_MISSING = 2
    OUT_OF_SYNC = 3
    NO_STAGE = 4
    MEMORY = 5
    BAD_FRAME = 6
    TOO_LONG = 7  # OPEN max_len beyond the model's context
    NO_ADAPTER = 8  # OPEN names an adapter the stage was never sent (a restarted node)


@dataclass
class Frame:
    op: Op
    stage: str = ""
    session: str = ""
    seq: int = 0
    arg: int = 0
    codec: int = JSON_CODEC
    reply_codec: int = 0
    shape: tuple[int, ...] = ()
    payload: bytes = b""
    meta: dict[str, Any] = field(default_factory=dict)  # local only, never on the wire

    @property
    def wire_size(self) -> int:
        return (_HEAD.size + 4 * len(self.shape) + len(self.stage.encode())
                + len(self.session.encode()) + len(self.payload))

    def pack(self) -> bytes:
        key, sid = self.stage.encode(), self.session.encode()
        if len(key) > 255 or len(sid) > 255:
            raise FrameError("stage key and session id must be at most 255 bytes")
        if len(self.shape) > MAX_NDIM or not all(0 <= d <= _U32 for d in self.shape):
            raise FrameError(f"shape {self.shape} cannot be sent: at most {MAX_NDIM} dims, "
                             "each in [0, 2^32)")
        for name, value, top in (("op", int(self.op), 255), ("codec", self.codec, 255),
                                 ("reply codec", self.reply_codec, 255), ("seq", self.seq, _U32),
                                 ("arg", self.arg, _U32)):
            if not 0 <= value <= top:
                raise FrameError(f"frame {name} {value} does not fit its field (0..{top})")
        head = _HEAD.pack(MAGIC, VERSION, int(self.op), self.codec, self.reply_codec,
                          len(self.shape), len(key), len(sid), 0, self.seq, self.arg)
        return b"".join((head, struct.pack(f"<{len(self.shape)}I", *self.shape), key, sid,
                         self.payload))

    @classmethod
    def unpack(cls, data: bytes) -> Frame:
        """Decode one frame; anything malformed raises :class:`FrameError` (never another
        type), checked against the actual byte count before anything is read or allocated."""
        if len(data) < _HEAD.size:
            raise FrameError(f"frame of {len(data)} bytes is shorter than its {_HEAD.size}-byte "
                             "header: is this a stage node client?")
        magic, ver, op, codec, reply, nd, kl, sl, reserved, seq, arg = _HEAD.unpack_from(data)
        if magic != MAGIC:
            raise FrameError("not an edgeweave frame (bad magic): is this a stage node?")
        if ver != VERSION:
            raise FrameError(f"frame version {ver} is not supported (this build speaks "
                             f"{VERSION}): run the same edgeweave version on every node")
        # from here on the header is ours, so an answer can echo the request's seq
        if op not in _OPS:
            raise FrameError(f"unknown op {op}: this build knows "
                             f"{', '.join(f'{o.name}={o.value}' for o in Op)}", seq)
        if reserved:
            raise FrameError(f"reserved header byte is {reserved}, not 0: the peer speaks "
                             "another revision of the frame format", seq)
        if nd > MAX_NDIM:
            raise FrameError(f"ndim {nd} is more than the {MAX_NDIM} dims a frame may carry",
                             seq)
        need = _HEAD.size + 4 * nd + kl + sl
        if len(data) < need:
            raise FrameError(f"frame of {len(data)} bytes is truncated: its header announces "
                             f"{nd} dims, a {kl}-byte stage key and a {sl}-byte session id "
                             f"({need} bytes before the payload)", seq)
        pos = _HEAD.size
        shape = struct.unpack_from(f"<{nd}I", data, pos)
        pos += 4 * nd
        try:
            key = bytes(data[pos:pos + kl]).decode()
            sid = bytes(data[pos + kl:pos + kl + sl]).decode()
        except UnicodeDecodeError:
            raise FrameError("stage key or session id is not UTF-8", seq) from None
        return cls(Op(op), key, sid, seq, arg, codec, reply, tuple(shape), bytes(data[need:]))

    # -- helpers for JSON payloads --------------------------------------------------------
    def json(self) -> Any:
        if not self.payload:
            return None
        try:
            return json.loads(self.payload.decode())
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError both are
            raise FrameError(f"{self.op.name} payload is not UTF-8 JSON ({e})", self.seq) from None

    @staticmethod
    def json_bytes(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


MAX_BATCH = 1024  # items in one FORWARD_BATCH: a hostile count must not allocate much
_U32S = struct.Struct("<I")


def pack_batch(frames: list[Frame]) -> bytes:
    """Frames as one batch payload (see the module docstring)."""
    if len(frames) > MAX_BATCH:
        raise FrameError(f"a batch carries at most {MAX_BATCH} frames (got {len(frames)})")
    parts = [_U32S.pack(len(frames))]
    for f in frames:
        raw = f.pack()
        parts += [_U32S.pack(len(raw)), raw]
    return b"".join(parts)


def unpack_batch(payload: bytes, seq: int | None = None) -> list[Frame]:
    """The frames of a batch payload; anything malformed raises :class:`FrameError`."""
    if len(payload) < 4:
        raise FrameError("a batch payload starts with its u32 item count", seq)
    (n,) = _U32S.unpack_from(payload)
    if n > MAX_BATCH:
        raise FrameError(f"a batch carries at most {MAX_BATCH} frames (announced {n})", seq)
    frames, pos = [], 4
    for _ in range(n):
        if len(payload) < pos + 4:
            raise FrameError("batch payload truncated before an item's length", seq)
        (size,) = _U32S.unpack_from(payload, pos)
        pos += 4
        if len(payload) < pos + size:
            raise FrameError(f"batch item announces {size} bytes, {len(payload) - pos} left",
                             seq)
        frames.append(Frame.unpack(payload[pos:pos + size]))
        pos += size
    if pos != len(payload):
        raise FrameError(f"{len(payload) - pos} bytes after the last batch item", seq)
    return frames


def error(request: Frame, message: str, code: ErrorCode = ErrorCode.GENERIC) -> Frame:
    return Frame(Op.ERROR, request.stage, request.session, request.seq, int(code),
                 payload=message.encode())
