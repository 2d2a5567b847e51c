"""Bad input to a stage node gets one clear error and never a crash (issue 15).

Real gRPC servers on 127.0.0.1 with a tiny random-weight model (4 blocks, 2 kv heads of 16,
fp32: 4 x 2 x 2 x 16 x 4 = 1 KiB of KV cache per token; context 256, vocabulary 128)."""

from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import pytest

from edgeweave.errors import ConfigError, EdgeweaveError, RuntimeStageError
from edgeweave.runtime import codec
from edgeweave.runtime.engines.torch import TorchStageEngine
from edgeweave.runtime.stage import StageHost
from edgeweave.runtime.transport.frame import ErrorCode, Frame, Op
from edgeweave.runtime.transport.grpc_link import GrpcLink
from edgeweave.runtime.transport.grpc_server import serve
from edgeweave.security.certs import init_fleet
from edgeweave.security.tls import TLSFiles
from tests.conftest import make_cfg, random_model
from tests.runtime.node_helpers import RawStream, running_node

CFG = make_cfg()
KV_BYTES_PER_TOKEN = CFG.num_layers * 2 * CFG.num_kv_heads * CFG.head_dim * 4  # fp32


@pytest.fixture(scope="module")
def model():
    return random_model(CFG, seed=7)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs")
    init_fleet(folder, ("coordinator", "node0"))
    return folder


@pytest.fixture(scope="module")
def tls_node(model, certs):
    """A mutual-TLS node with the first stage (the whole model) and a middle-to-last one."""
    with running_node(model, ((0, 4), (2, 4)), TLSFiles.from_dir(certs, "node0")) as (host, addr):
        yield host, addr


@pytest.fixture
def stream(tls_node, certs):
    with RawStream(tls_node[1], TLSFiles.from_dir(certs, "coordinator")) as s:
        yield s


def _ids(*ids: int) -> bytes:
    return codec.IDS.encode_np(np.array([ids]))


def _forward(session: str, ids: tuple[int, ...], pos: int = 0, seq: int = 50) -> Frame:
    return Frame(Op.FORWARD, "0-4:fp32", session, seq, pos, codec.IDS.id, codec.FP32.id,
                 (1, len(ids)), _ids(*ids))


def _head(op: int = Op.FORWARD, codec_id: int = 255, reply: int = 0, nd: int = 0, kl: int = 0,
          sl: int = 0, reserved: int = 0, seq: int = 0, arg: int = 0, magic: bytes = b"EW",
          version: int = 1) -> bytes:
    return struct.pack("<2sBBBBBBBBII", magic, version, int(op), codec_id, reply, nd, kl, sl,
                       reserved, seq, arg)


def _cli_node(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from edgeweave.cli.app import entry; entry()", "node", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:  # run() has killed it
        pytest.fail(f"`edgeweave node {' '.join(args)}` kept running instead of refusing; "
                    f"stdout: {e.stdout!r}")


# -- 1. a taken port is an error, not a second listener -------------------------------------
def test_second_node_on_the_port_of_a_tls_node_is_refused(tls_node, certs):
    # Prepare: the mutual-TLS node listens on `port`
    _, addr = tls_node
    port = int(addr.rsplit(":", 1)[1])
    started = []
    # Execute: a plaintext node asks for the same port
    try:
        with pytest.raises(RuntimeStageError, match=rf"port {port} is taken.*--port"):
            started.append(serve(StageHost("mem"), f"127.0.0.1:{port}"))
    finally:
        for server, _ in started:
            server.stop(0)
    # Assert: the TLS node still answers, every connection (the kernel split none away)
    for _ in range(4):
        link = GrpcLink(addr, TLSFiles.from_dir(certs, "coordinator"), connect_timeout=5)
        try:
            assert link.call(Frame(Op.PING), 5).op == Op.OK
        finally:
            link.close()


def test_cli_node_on_a_taken_port_prints_one_line_and_exits_2(tls_node):
    port = tls_node[1].rsplit(":", 1)[1]
    result = _cli_node("--host", "127.0.0.1", "--port", port)
    assert result.returncode == 2
    assert "READY" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # no traceback, no gRPC core log line
    assert lines[0].startswith("error: ") and f"port {port} is taken" in lines[0]
    assert "--port" in lines[0]


# -- 2. malformed frames: an ERROR naming the problem, and the stream lives on ---------------
HEADER_CASES = {
    # name: (raw bytes with seq 7 where the header has one, expected text, seq echoed)
    "ndim 255 with a short payload": (_head(nd=255, seq=7) + b"\x01\x02", "ndim 255", True),
    "ndim 9": (_head(nd=9, seq=7) + bytes(36), "ndim 9", True),
    "shape cut short": (_head(nd=3, seq=7) + bytes(4), "truncated", True),
    "stage key longer than the frame": (_head(kl=200, seq=7) + b"0-4", "truncated", True),
    "unknown op": (_head(op=99, seq=7), "unknown op 99", True),
    "reserved byte set": (_head(reserved=1, seq=7), "reserved", True),
    "stage key not UTF-8": (_head(kl=2, seq=7) + b"\xff\xfe", "UTF-8", True),
    "bad magic": (_head(magic=b"XX", seq=7), "bad magic", False),
    "other version": (_head(version=9, seq=7), "version 9", False),
    "shorter than a header": (b"EW\x01\x07\x00", "shorter than its 18-byte header", False),
    "empty message": (b"", "shorter than its 18-byte header", False),
}


@pytest.mark.parametrize("name", list(HEADER_CASES))
def test_malformed_frame_gets_error_and_the_stream_survives(stream, name):
    raw, expected, echoes_seq = HEADER_CASES[name]
    # Execute
    resp = stream.ask(raw)
    # Assert: one clear answer, routed back to the request when its header was readable
    assert resp.op == Op.ERROR and resp.arg == ErrorCode.BAD_FRAME
    assert expected in resp.payload.decode(), resp.payload
    assert resp.seq == (7 if echoes_seq else 0)
    # ... and the same stream still serves a session
    assert stream.ask(Frame(Op.PING, seq=8)).seq == 8
    assert stream.ask(Frame(Op.OPEN, "0-4:fp32", "after", 9, 16)).op == Op.OK
    out = stream.ask(_forward("after", (1, 5, 9)))
    assert out.op == Op.OK and out.shape == (1, CFG.vocab_size)


def _fwd(stage: str = "0-4:fp32", codec_id: int = 255, reply: int = 0,
         shape: tuple[int, ...] = (1, 2), payload: bytes | None = None) -> Frame:
    return Frame(Op.FORWARD, stage, "s", 60, 0, codec_id, reply, shape,
                 _ids(3, 4) if payload is None else payload)


REQUEST_CASES = {
    # name: (request to the open session "s" of both stages, code, expected text)
    "payload shorter than its shape": (_fwd(shape=(1, 3)), ErrorCode.BAD_FRAME,
                                       "ids payload of 8 bytes does not match shape (1, 3)"),
    "unknown payload codec": (_fwd(codec_id=99), ErrorCode.BAD_FRAME, "payload codec id 99"),
    "unknown reply codec": (_fwd(reply=99), ErrorCode.BAD_FRAME, "reply codec id 99"),
    "hidden states to the first stage": (_fwd(codec_id=1), ErrorCode.BAD_FRAME,
                                         "payload codec id 1"),
    "batch of two": (_fwd(shape=(2, 1)), ErrorCode.BAD_FRAME, "takes (1, T) token ids"),
    "no tokens": (_fwd(shape=(1, 0), payload=b""), ErrorCode.BAD_FRAME, "takes (1, T)"),
    "token id past the vocabulary": (_fwd(payload=_ids(3, 500)), ErrorCode.BAD_FRAME,
                                     "token ids must be whole numbers in [0, 128)"),
    "4 billion tokens announced": (_fwd(shape=(1, 2**32 - 1)), ErrorCode.TOO_LONG,
                                   "opened for 16 tokens"),
    "hidden size 63 to a middle stage": (
        _fwd("2-4:fp32", 0, 0, (1, 1, 63), bytes(4 * 63)), ErrorCode.BAD_FRAME,
        "takes (1, T, 64) hidden states"),
    "LOAD payload not JSON": (Frame(Op.LOAD, payload=b"{nope"), ErrorCode.BAD_FRAME,
                              "not UTF-8 JSON"),
    "LOAD without a shard": (Frame(Op.LOAD, payload=b'{"model": "x"}'), ErrorCode.BAD_FRAME,
                             "LOAD payload must be a JSON object"),
}


@pytest.mark.parametrize("name", list(REQUEST_CASES))
def test_bad_request_is_refused_before_the_engine_runs(stream, name):
    # Prepare: session "s" open at both stages
    for stage in ("0-4:fp32", "2-4:fp32"):
        assert stream.ask(Frame(Op.OPEN, stage, "s", 1, 16)).op == Op.OK
    req, code, expected = REQUEST_CASES[name]
    # Execute
    resp = stream.ask(req)
    # Assert: a refusal with its reason, and the session's cache untouched (still at 0)
    assert resp.op == Op.ERROR and resp.arg == code, resp.payload
    assert expected in resp.payload.decode(), resp.payload
    assert resp.seq == req.seq
    out = stream.ask(_forward("s", (1, 5, 9), pos=0))
    assert out.op == Op.OK, out.payload
    hidden = Frame(Op.FORWARD, "2-4:fp32", "s", 61, 0, codec.FP32.id, codec.FP32.id,
                   (1, 1, CFG.hidden_size), bytes(4 * CFG.hidden_size))
    assert stream.ask(hidden).op == Op.OK


# -- 3. OPEN is checked against the context and the memory cap before allocating ------------
class RecordingEngine(TorchStageEngine):
    """The reference engine, remembering every max_len it was asked to allocate."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.allocations: list[int] = []

    def open(self, session_id: str, max_len: int) -> None:
        self.allocations.append(max_len)
        super().open(session_id, max_len)


def test_open_beyond_context_or_memory_cap_is_refused_before_allocating(model):
    cap = 128 * KV_BYTES_PER_TOKEN  # room for 128 tokens
    with running_node(model, memory_cap_bytes=cap, engine=RecordingEngine) as (host, addr), \
            RawStream(addr) as s:
        engine = host.engines["0-4:fp32"]

        def open_(session: str, max_len: int) -> Frame:
            return s.ask(Frame(Op.OPEN, "0-4:fp32", session, 1, max_len))

        def info() -> dict:
            return s.ask(Frame(Op.INFO)).json()

        # a session that fits; its bytes are what the config predicts
        assert open_("a", 64).op == Op.OK
        assert info()["memory_bytes"] == 64 * KV_BYTES_PER_TOKEN
        # alone bigger than the cap: refused, and "a" is not evicted for nothing
        resp = open_("b", 200)
        msg = resp.payload.decode()
        assert resp.op == Op.ERROR and resp.arg == ErrorCode.MEMORY, msg
        assert "200 tokens" in msg and "max_len <= 128" in msg and "--memory-mb" in msg
        assert info()["sessions"] == 1 and info()["evictions"] == 0
        # beyond the model's context of 256 (the probe battery's max_len 20000)
        for too_long in (257, 20000, 2**32 - 1):
            resp = open_("c", too_long)
            assert resp.op == Op.ERROR and resp.arg == ErrorCode.TOO_LONG, resp.payload
            assert "context of 256 tokens" in resp.payload.decode()
        resp = open_("d", 0)
        assert resp.op == Op.ERROR and b"at least 1" in resp.payload
        assert not {200, 257, 20000, 2**32 - 1, 0} & set(engine.allocations)
        # the stream and session "a" still work
        assert s.ask(_forward("a", (1, 5, 9))).op == Op.OK
        # a session that fits beside nothing else evicts the least recently used one
        assert open_("e", 100).op == Op.OK
        assert info()["evictions"] == 1
        assert info()["memory_bytes"] == 100 * KV_BYTES_PER_TOKEN
        # a step past the session's own max_len is refused before decoding
        resp = s.ask(_forward("e", tuple(range(1, 102))))
        assert resp.op == Op.ERROR and resp.arg == ErrorCode.TOO_LONG
        assert b"opened for 100 tokens" in resp.payload
        assert s.ask(_forward("e", (1, 2))).op == Op.OK


# -- 4. `edgeweave node` options ----------------------------------------------------------
@pytest.mark.parametrize(("args", "option"), [
    (("--host", "999.1.1.1"), "--host"),
    (("--host", "not a host!"), "--host"),
    (("--port", "99999"), "--port"),
    (("--port", "-1"), "--port"),
    (("--memory-mb", "-5"), "--memory-mb"),
    (("--memory-mb", "0"), "--memory-mb"),
    (("--threads", "-2"), "--threads"),
])
def test_cli_node_refuses_bad_options_in_one_line(args, option):
    result = _cli_node(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {option} ") and args[1] in lines[0]


def test_node_options_accept_literal_addresses_and_bracket_ipv6():
    from edgeweave.cli.node import NodeOptions

    for host in ("127.0.0.1", "0.0.0.0", "::1", "[::1]"):
        NodeOptions(host, 0, 1)
    NodeOptions("127.0.0.1", 65535, 4096, threads=2)
    assert NodeOptions("::1", 0, 1).bind_host == "[::1]"
    assert NodeOptions("127.0.0.1", 0, 1).bind_host == "127.0.0.1"


def test_python_callers_get_the_same_checks():
    with pytest.raises(ConfigError, match="memory-mb"):
        StageHost("mem", memory_cap_bytes=-5 << 20)
    with pytest.raises(ConfigError, match=r"port 99999 is not in \[0, 65535\]"):
        serve(StageHost("mem"), "127.0.0.1:99999")
    with pytest.raises(ConfigError, match=r"\[::1\]:70000: port 70000 is not in .*0 to pick one"):
        serve(StageHost("mem"), "[::1]:70000")
    assert issubclass(RuntimeStageError, EdgeweaveError)
