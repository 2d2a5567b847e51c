"""The loopback link shaper: bytes and order kept, delay and rate never undercut, gRPC through."""

from __future__ import annotations

import socket
import socketserver
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeweave.errors import ConfigError
from edgeweave.models import load
from edgeweave.runtime import codec as codecs
from edgeweave.runtime.stage import StageHost
from edgeweave.runtime.transport.delay_proxy import DelayProxy, LinkShape
from edgeweave.runtime.transport.frame import Frame, Op
from edgeweave.runtime.transport.grpc_link import GrpcLink
from edgeweave.runtime.transport.grpc_server import serve

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(1 << 16):
            self.request.sendall(data)


class _CountThenAnswer(socketserver.BaseRequestHandler):
    """Reads until the client shuts its write side, then answers how many bytes came."""

    def handle(self) -> None:
        n = 0
        while data := self.request.recv(1 << 16):
            n += len(data)
        self.request.sendall(f"{n} bytes".encode())


@pytest.fixture(scope="module")
def echo():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _round_trip(address: str, chunks: list[bytes]) -> bytes:
    host, port = address.rsplit(":", 1)
    want = sum(map(len, chunks))
    with socket.create_connection((host, int(port)), timeout=20) as s:
        for c in chunks:
            s.sendall(c)
        got = b""
        while len(got) < want:
            data = s.recv(1 << 16)
            if not data:
                break
            got += data
    return got


@settings(max_examples=15, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=100_000), min_size=1, max_size=6))
def test_every_byte_arrives_in_order(echo, chunks):
    with DelayProxy(echo, LinkShape(delay_ms=1)) as proxy:
        assert _round_trip(proxy.address, chunks) == b"".join(chunks)


def test_a_round_trip_takes_at_least_twice_the_one_way_delay(echo):
    with DelayProxy(echo, LinkShape(delay_ms=40)) as proxy:
        t0 = time.monotonic()
        assert _round_trip(proxy.address, [b"ping"]) == b"ping"
        assert time.monotonic() - t0 >= 2 * 0.040


def test_the_rate_limit_is_never_exceeded(echo):
    payload = bytes(200_000)  # 1.6 Mbit: at 16 Mbit/s it cannot cross in under 0.1 s (the
    # way back overlaps the way there, as on a real full-duplex link)
    with DelayProxy(echo, LinkShape(rate_mbit=16)) as proxy:
        t0 = time.monotonic()
        assert _round_trip(proxy.address, [payload]) == payload
        assert time.monotonic() - t0 >= 0.1


def test_a_bad_shape_is_refused():
    with pytest.raises(ConfigError, match="delay_ms >= 0"):
        LinkShape(delay_ms=-1)


def test_a_stage_node_answers_through_the_proxy_as_directly(tiny_folder):
    lm = load(str(tiny_folder))
    n = lm.model.cfg.num_layers
    server, port = serve(StageHost(str(tiny_folder)))
    try:
        direct = GrpcLink(f"127.0.0.1:{port}")
        with DelayProxy(f"127.0.0.1:{port}", LinkShape(delay_ms=5)) as proxy:
            shaped = GrpcLink(proxy.address)
            load_frame = Frame(Op.LOAD, payload=Frame.json_bytes(
                {"shard": {"start": 0, "end": n, "n_layers": n}, "backend": "torch"}))
            key = direct.call(load_frame, 60).stage
            ids = np.asarray([[1, 5, 9, 17]], np.int64)
            outs = []
            for link, sid in ((direct, "a"), (shaped, "b")):
                assert link.call(Frame(Op.OPEN, key, sid, arg=32), 20).op == Op.OK
                resp = link.call(Frame(Op.FORWARD, key, sid, arg=0, shape=ids.shape,
                                       codec=codecs.IDS.id, reply_codec=codecs.FP32.id,
                                       payload=codecs.IDS.encode(ids)), 20)
                assert resp.op == Op.OK, resp.payload
                outs.append(resp.payload)
            assert outs[0] == outs[1]
            shaped.close()
        direct.close()
    finally:
        server.stop(0)


def test_a_half_closed_connection_still_gets_its_answer():
    # Prepare: a server that answers only after the client's EOF, 5 ms each way
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _CountThenAnswer)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with DelayProxy(f"127.0.0.1:{server.server_address[1]}",
                        LinkShape(delay_ms=5)) as proxy:
            host, port = proxy.address.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=20) as s:
                # Execute: send, shut the write side, read the answer to the end
                s.sendall(b"x" * 70_000)
                s.shutdown(socket.SHUT_WR)
                got = b""
                while data := s.recv(1 << 16):
                    got += data
    finally:
        server.shutdown()
        server.server_close()
    # Assert: the EOF went through after the bytes, and the answer came back whole
    assert got == b"70000 bytes"


def test_a_node_proxy_delays_the_frame_socket_the_coordinator_switches_to(tiny_folder):
    # Prepare: a node with its frame socket, behind 20 ms each way on both of its ports
    from edgeweave.runtime.transport.delay_proxy import NodeDelayProxy
    from edgeweave.runtime.transport.dial import dial
    from edgeweave.runtime.transport.frame_socket import FrameServer, SocketLink

    host = StageHost(str(tiny_folder))
    server, port = serve(host)
    frames = FrameServer(host)
    host.frames_port = frames.port
    try:
        with NodeDelayProxy(f"127.0.0.1:{port}", LinkShape(delay_ms=20)) as proxy:
            # Execute: dial the proxy as a coordinator would, and time a round trip
            link = dial(proxy.address)
            t0 = time.perf_counter()
            assert link.call(Frame(Op.PING), 10).op == Op.OK
            rtt = time.perf_counter() - t0
            peer = link._sock.getpeername()
            link.close()
    finally:
        frames.close()
        server.stop(0)
    # Assert: the frames took the shaped socket, not the node's own port
    assert isinstance(link, SocketLink)
    assert peer == ("127.0.0.2", frames.port)
    assert rtt >= 0.04
