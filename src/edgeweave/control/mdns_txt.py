"""A node's announcement as DNS-SD TXT strings, and back (pure; ``control.mdns`` uses it).

A TXT record is a list of ``key=value`` strings of at most 255 bytes each, and a node's
announcement is larger (its PEM certificate alone is about 600 bytes), so the JSON body is
cut into :data:`CHUNK`-byte pieces ``c00``, ``c01``, ... beside ``fleet`` (which fleet the
node belongs to: browsers of other fleets skip it without decoding), ``v`` (the format),
``n`` (how many pieces) and ``sha`` (of the whole JSON: a record cut short or mixed from two
updates is refused, never half-read). The JSON is ASCII (``ensure_ascii``), so a piece
boundary never splits a character.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from edgeweave.errors import ConfigError

TXT_VERSION = "1"
# 250 + len("c00=") = 254 <= 255, the most one TXT string can hold
CHUNK = 250
# the largest mDNS message is 9000 bytes (RFC 6762 s17): 34 full pieces fill it
MAX_CHUNKS = 34
_SHA_HEX = 16  # 64 bits: detects damage; trust comes from the certificate, not this


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:_SHA_HEX]


def encode_txt(fleet: str, body: Mapping[str, Any]) -> dict[str, str]:
    """The TXT properties (in order) announcing ``body`` to ``fleet``."""
    data = json.dumps(dict(body), separators=(",", ":"), ensure_ascii=True, default=str)
    raw = data.encode()
    pieces = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)] or [""]
    if len(pieces) > MAX_CHUNKS:
        raise ConfigError(f"the announcement is {len(raw)} bytes, more than one mDNS message "
                          f"holds ({MAX_CHUNKS * CHUNK}): announce fewer peers' links or "
                          "variants, or use --mqtt")
    if len(fleet.encode()) > 255 - len("fleet="):
        raise ConfigError(f"fleet name {fleet[:20]!r}... is too long for mDNS: use at most "
                          "249 bytes")
    props = {"fleet": fleet, "v": TXT_VERSION, "n": str(len(pieces)), "sha": _digest(raw)}
    props.update({f"c{k:02d}": p for k, p in enumerate(pieces)})
    return props


def _text(props: Mapping[bytes, bytes | None], key: str) -> str | None:
    v = props.get(key.encode())
    if v is None:
        return None
    try:
        return v.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(f"TXT key {key!r} is not ASCII") from None


def txt_fleet(props: Mapping[bytes, bytes | None]) -> str | None:
    """The fleet a TXT record announces to (None: not an edgeweave announcement)."""
    v = props.get(b"fleet")
    return None if v is None else v.decode("utf-8", "replace")


def decode_txt(props: Mapping[bytes, bytes | None]) -> dict[str, Any]:
    """The body :func:`encode_txt` announced; :class:`ConfigError` saying what is wrong
    with a record that is cut short, garbled or of another format version."""
    version = _text(props, "v")
    if version != TXT_VERSION:
        raise ConfigError(f"TXT format {version!r}, not {TXT_VERSION!r}: run the same "
                          "edgeweave version on the nodes and the server")
    try:
        n = int(_text(props, "n") or "")
    except ValueError:
        raise ConfigError("TXT record has no piece count 'n'") from None
    if not 1 <= n <= MAX_CHUNKS:
        raise ConfigError(f"TXT piece count {n} is not in [1, {MAX_CHUNKS}]")
    pieces = [_text(props, f"c{k:02d}") for k in range(n)]
    missing = [k for k, p in enumerate(pieces) if p is None]
    if missing:
        raise ConfigError(f"TXT record misses piece(s) {missing} of {n}: cut short")
    data = "".join(p for p in pieces if p is not None).encode()
    if _digest(data) != _text(props, "sha"):
        raise ConfigError("TXT record does not match its checksum: garbled or cut short")
    try:
        body = json.loads(data)
    except json.JSONDecodeError as e:
        raise ConfigError(f"TXT record is not JSON ({e})") from e
    if not isinstance(body, dict):
        raise ConfigError("TXT record is not a JSON object")
    return body
