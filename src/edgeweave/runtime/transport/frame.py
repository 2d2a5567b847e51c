"""Versioned binary frame exchanged between the coordinator and stage nodes (schema v1).

One frame per gRPC stream message (generic handlers, no protoc), or passed as an object by
the in-process transport. All integers little-endian.

========  ====  =============================================================
offset    size  field
========  ====  =============================================================
0         2     magic ``b"EW"``
2         1     version (``1``); a node answers other versions with ERROR
3         1     op (:class:`Op`)
4         1     payload codec id (``runtime.codec``: 0 fp32, 1 fp16, 2 int8, 255 ids;
                254 = UTF-8 JSON or text)
5         1     reply codec id: how a FORWARD's output hidden states should be encoded
6         1     ndim of the payload tensor (0 for none)
7         1     length K of the stage key (UTF-8, e.g. ``"0-10:fp32"``)
8         1     length S of the session id (UTF-8)
9         1     reserved (0)
10        4     seq: request number; a response echoes its request's seq
14        4     arg: OPEN max_len; TRUNCATE length; FORWARD cache length expected
                before the step (a mismatch is refused, so tokens are never lost or
                doubled); OK after FORWARD: compute time in microseconds; ERROR: code
18        4*nd  shape (u32 per dim)
..        K     stage key
..        S     session id
..        rest  payload
========  ====  =============================================================

Requests: OPEN, FORWARD, TRUNCATE, CLOSE, LOAD (payload: JSON ``EngineConfig`` fields),
INFO, PING. Responses: OK (FORWARD: the output tensor; INFO/LOAD: JSON) or ERROR (payload:
the message, arg: :class:`ErrorCode`).
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
_HEAD = struct.Struct("<2sBBBBBBBBII")  # 18 bytes


class Op(IntEnum):
    OPEN = 1
    FORWARD = 2
    TRUNCATE = 3
    CLOSE = 4
    LOAD = 5
    INFO = 6
    PING = 7
    OK = 16
    ERROR = 17


class ErrorCode(IntEnum):
    GENERIC = 1
    SESSION_MISSING = 2
    OUT_OF_SYNC = 3
    NO_STAGE = 4
    MEMORY = 5
    BAD_FRAME = 6


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
        if len(key) > 255 or len(sid) > 255 or len(self.shape) > 255:
            raise RuntimeStageError("stage key and session id must be at most 255 bytes")
        head = _HEAD.pack(MAGIC, VERSION, int(self.op), self.codec, self.reply_codec,
                          len(self.shape), len(key), len(sid), 0, self.seq, self.arg)
        return b"".join((head, struct.pack(f"<{len(self.shape)}I", *self.shape), key, sid,
                         self.payload))

    @classmethod
    def unpack(cls, data: bytes) -> Frame:
        if len(data) < _HEAD.size:
            raise RuntimeStageError(f"frame of {len(data)} bytes is shorter than its header")
        magic, ver, op, codec, reply, nd, kl, sl, _, seq, arg = _HEAD.unpack_from(data)
        if magic != MAGIC:
            raise RuntimeStageError("not an edgeweave frame (bad magic): is this a stage node?")
        if ver != VERSION:
            raise RuntimeStageError(f"frame version {ver} is not supported (this build speaks "
                                    f"{VERSION}): run the same edgeweave version on every node")
        pos = _HEAD.size
        shape = struct.unpack_from(f"<{nd}I", data, pos)
        pos += 4 * nd
        key = data[pos:pos + kl].decode()
        pos += kl
        sid = data[pos:pos + sl].decode()
        pos += sl
        return cls(Op(op), key, sid, seq, arg, codec, reply, tuple(shape), data[pos:])

    # -- helpers for JSON payloads --------------------------------------------------------
    def json(self) -> Any:
        return json.loads(self.payload.decode()) if self.payload else None

    @staticmethod
    def json_bytes(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


def error(request: Frame, message: str, code: ErrorCode = ErrorCode.GENERIC) -> Frame:
    return Frame(Op.ERROR, request.stage, request.session, request.seq, int(code),
                 payload=message.encode())
