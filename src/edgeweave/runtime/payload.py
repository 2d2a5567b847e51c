"""What a stage receives, as it travels and as the coordinator records it for replay.

A :class:`Payload` is a tensor on the wire (codec id, shape, encoded bytes); a session keeps
every stage's inputs as a list of them (its *records*), which is what makes replay after a
failover exact. The helpers here merge, cut and measure such records; ``session``,
``pipeline`` and ``prefix_plan`` share them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeweave.errors import RuntimeStageError
from edgeweave.runtime import codec as codecs


@dataclass(frozen=True)
class Payload:
    """A tensor as it travels: codec id, shape, encoded bytes."""

    codec: int
    shape: tuple[int, ...]
    data: bytes


def merge_payloads(chunks: list[Payload]) -> Payload:
    """Concatenate recorded inputs along the token axis; the decoded values travel as
    fp32 (or ids), so the merged chunk holds exactly what the stage received."""
    parts = [codecs.get(c.codec).decode(c.data, c.shape) for c in chunks]
    out = codecs.IDS if chunks[0].codec == codecs.IDS.id else codecs.FP32
    merged = np.concatenate(parts, axis=1)
    return Payload(out.id, tuple(merged.shape), out.encode(merged))


def cut_records(chunks: list[Payload], length: int) -> list[Payload]:
    """The recorded inputs of one stage for its first ``length`` tokens; a chunk cut in two
    keeps its first part as fp32 (or ids), exactly what the stage received."""
    out, pos = [], 0
    for c in chunks:
        if pos >= length:
            break
        n = x_tokens(c)
        if pos + n <= length:
            out.append(c)
        else:
            part = codecs.get(c.codec).decode(c.data, c.shape)[:, :length - pos]
            codec = codecs.IDS if c.codec == codecs.IDS.id else codecs.FP32
            out.append(Payload(codec.id, tuple(part.shape), codec.encode(part)))
        pos += n
    if pos < length:
        raise RuntimeStageError(f"the records hold {pos} tokens, not the {length} asked for")
    return out


def x_tokens(x: Payload) -> int:
    """Token positions in a payload: (B, T) ids or (B, T, H) hidden states."""
    return x.shape[1]
