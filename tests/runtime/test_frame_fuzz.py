"""Property-based fuzzing of the wire frame: any bytes decode to a frame or a FrameError.

The pure decoder gets random byte strings and mutations of valid encoded frames (flipped
bytes, truncation, extension, ndim/shape/length fields set to extremes); a live node gets a
few of them over one real stream and must then still serve a valid OPEN and FORWARD."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeweave.errors import EdgeweaveError
from edgeweave.runtime import codec
from edgeweave.runtime.transport.frame import MAX_NDIM, ErrorCode, Frame, FrameError, Op
from tests.conftest import make_cfg, random_model
from tests.runtime.node_helpers import RawStream, running_node

U32 = 2**32 - 1
HEAD = 18
EXTREMES = (0, 1, 2, MAX_NDIM, MAX_NDIM + 1, 127, 128, 254, 255)
EXTREME_U32 = (0, 1, 2, 2**16, 2**31 - 1, 2**31, U32)

names = st.text(max_size=24).filter(lambda t: len(t.encode()) <= 255)
frames = st.builds(
    Frame,
    op=st.sampled_from(list(Op)), stage=names, session=names,
    seq=st.integers(0, U32), arg=st.integers(0, U32),
    codec=st.integers(0, 255), reply_codec=st.integers(0, 255),
    shape=st.lists(st.integers(0, U32), max_size=MAX_NDIM).map(tuple),
    payload=st.binary(max_size=64))


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[Frame] = frames) -> bytes:
    """A valid packed frame with 1-4 mutations applied in turn."""
    data = bytearray(draw(base).pack())
    for _ in range(draw(st.integers(1, 4))):
        # header fields first: hypothesis favours the front of the list, and broken length
        # fields are what reach past the bytes received
        kind = draw(st.sampled_from(["ndim", "lengths", "shape", "truncate", "flip", "extend",
                                     "splice"]))
        if kind == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif kind == "extend":
            data += draw(st.binary(min_size=1, max_size=64))
        elif kind == "ndim" and len(data) > 6:
            data[6] = draw(st.sampled_from(EXTREMES))
        elif kind == "lengths" and len(data) > 8:
            data[draw(st.sampled_from([7, 8]))] = draw(st.sampled_from(EXTREMES))
        elif kind == "shape" and len(data) >= HEAD + 4:
            k = draw(st.integers(0, (len(data) - HEAD) // 4 - 1))
            struct.pack_into("<I", data, HEAD + 4 * k, draw(st.sampled_from(EXTREME_U32)))
        elif kind == "splice" and data:
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


wire_bytes = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=120).map(lambda b: b"EW\x01" + b),  # past the magic and version
    mutated())


def _decode_or_frame_error(raw: bytes) -> Frame | None:
    try:
        frame = Frame.unpack(raw)
    except FrameError as e:
        assert isinstance(e, EdgeweaveError) and str(e)
        return None
    except Exception as e:  # struct.error, ValueError, MemoryError, ...: the bug this hunts
        pytest.fail(f"Frame.unpack({raw[:40]!r}...) raised {type(e).__name__}: {e}")
    return frame


@settings(max_examples=300, derandomize=True, deadline=None)
@given(raw=wire_bytes)
def test_any_bytes_decode_to_a_frame_or_a_frame_error(raw):
    frame = _decode_or_frame_error(raw)
    if frame is not None:  # a decoded frame is a valid one: it packs back to the same bytes
        assert frame.pack() == raw
        assert len(frame.shape) <= MAX_NDIM


@settings(max_examples=300, derandomize=True, deadline=None)
@given(frame=frames)
def test_valid_frames_round_trip(frame):
    got = Frame.unpack(frame.pack())
    assert (got.op, got.stage, got.session, got.seq, got.arg, got.codec, got.reply_codec,
            got.shape, got.payload) == (frame.op, frame.stage, frame.session, frame.seq,
                                        frame.arg, frame.codec, frame.reply_codec, frame.shape,
                                        frame.payload)
    assert frame.wire_size == len(frame.pack())


@pytest.mark.parametrize("bad", [
    Frame(Op.PING, seq=-1), Frame(Op.PING, arg=2**32), Frame(Op.PING, codec=256),
    Frame(Op.PING, shape=(1,) * (MAX_NDIM + 1)), Frame(Op.PING, shape=(2**32,)),
    Frame(Op.PING, stage="x" * 256),
])
def test_unsendable_frames_raise_frame_error(bad):
    with pytest.raises(FrameError):
        bad.pack()


# -- the same bytes over a real stream ------------------------------------------------------
CFG = make_cfg()


def _ids_frame(op: Op, session: str, seq: int, arg: int, ids: tuple[int, ...] = ()) -> Frame:
    payload = codec.IDS.encode_np(np.array([ids])) if ids else b""
    return Frame(op, "0-4:fp32", session, seq, arg, codec.IDS.id, codec.FP32.id,
                 (1, len(ids)) if ids else (), payload)


# frames a coordinator sends, so the mutations land on realistic headers and payloads
requests = st.one_of(
    st.builds(_ids_frame, st.just(Op.FORWARD), st.just("fz"), st.integers(1, 1000),
              st.just(0), st.lists(st.integers(0, 127), min_size=1, max_size=6).map(tuple)),
    st.builds(_ids_frame, st.sampled_from([Op.OPEN, Op.TRUNCATE, Op.CLOSE]), st.just("fz"),
              st.integers(1, 1000), st.sampled_from([1, 16, 256, 257, 50000, U32])),
    st.builds(Frame, st.sampled_from([Op.PING, Op.INFO])))


def test_fuzzed_frames_on_a_live_stream_leave_it_usable():
    model = random_model(CFG, seed=11)
    with running_node(model, memory_cap_bytes=1 << 20) as (host, addr), RawStream(addr) as s:
        assert s.ask(_ids_frame(Op.OPEN, "fz", 1, 16)).op == Op.OK
        answers: list[Frame] = []

        @settings(max_examples=30, derandomize=True, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(raw=mutated(requests))  # plain random bytes rarely pass the magic
        def send(raw):
            answers.append(Frame.unpack(s.ask_raw(raw)))  # every request gets one answer

        send()
        # Assert: the node answered each of them, refused the malformed ones as such ...
        assert len(answers) >= 30
        assert any(a.op == Op.ERROR and a.arg == ErrorCode.BAD_FRAME for a in answers)
        # ... and the same stream still serves a fresh session end to end
        assert s.ask(_ids_frame(Op.OPEN, "after", 2, 32)).op == Op.OK
        out = s.ask(_ids_frame(Op.FORWARD, "after", 3, 0, (1, 5, 9)))
        assert out.op == Op.OK and out.seq == 3 and out.shape == (1, CFG.vocab_size)
        logits = codec.get(out.codec).decode(out.payload, out.shape)
        assert bool(np.isfinite(logits).all())
        assert host.info()["memory_bytes"] <= 1 << 20
