"""The frame socket beside a node's gRPC port: coordinators switch to it, same tokens, same
trust rule, and bad bytes or a dead node break only what they touch."""

from __future__ import annotations

import logging
import socket
import struct
import time
from contextlib import contextmanager

import pytest
import torch

from edgeweave.cli.app import main
from edgeweave.runtime.engine import LocalEngine
from edgeweave.runtime.engines.base import EngineConfig
from edgeweave.runtime.engines.torch import TorchStageEngine
from edgeweave.runtime.generate import SamplingParams, generate_step
from edgeweave.runtime.launch import attach
from edgeweave.runtime.stage import StageHost
from edgeweave.runtime.transport.base import StageUnavailable
from edgeweave.runtime.transport.dial import dial
from edgeweave.runtime.transport.frame import ErrorCode, Frame, Op
from edgeweave.runtime.transport.frame_socket import MAX_FRAME, FrameServer, SocketLink
from edgeweave.runtime.transport.grpc_link import GrpcLink
from edgeweave.runtime.transport.grpc_server import serve
from edgeweave.security.tls import TLSFiles
from edgeweave.types import Plan, Shard

PARAMS = SamplingParams(max_tokens=6, ignore_eos=True)


@pytest.fixture
def fleets(tmp_path):
    ours, foreign = tmp_path / "fleet", tmp_path / "foreign"
    assert main(["certs", "init", str(ours), "coordinator", "node0"]) == 0
    assert main(["certs", "init", str(foreign), "coordinator", "node0"]) == 0
    return ours, foreign


@contextmanager
def node(model, tls=None, frames: bool = True, announce: int | None = None):
    """gRPC + frame socket serving the whole tiny model, as ``edgeweave node`` does."""
    host = StageHost("mem")
    n = model.cfg.num_layers
    host.add_engine(TorchStageEngine(EngineConfig("mem", Shard(0, n, n)), model=model))
    server, port = serve(host, "127.0.0.1:0", tls)
    fs = FrameServer(host, "127.0.0.1", 0, tls) if frames else None
    host.frames_port = announce if announce is not None else (fs.port if fs else None)
    try:
        yield host, f"127.0.0.1:{port}", fs
    finally:
        if fs is not None:
            fs.close()
        server.stop(0)


def reference(model) -> list[int]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return list(generate_step(LocalEngine(model, 64), [1, 4, 9], PARAMS))
    finally:
        torch.set_num_threads(before)


def tokens(addr: str, tls=None) -> tuple[list[int], type]:
    coord = attach(Plan.single(4, "node0"), "mem", {"node0": addr}, tokenizer=None, tls=tls,
                   max_len=64).coordinator
    try:
        with coord.new_session() as s:
            got = list(generate_step(s, [1, 4, 9], PARAMS))
        return got, type(coord.links["node0"])
    finally:
        coord.close()


@pytest.mark.parametrize("secure", [False, True], ids=["plaintext", "mtls"])
def test_coordinator_switches_to_the_frame_socket(tiny_model, fleets, secure):
    ours, _ = fleets
    node_tls = TLSFiles.from_dir(ours, "node0") if secure else None
    coord_tls = TLSFiles.from_dir(ours, "coordinator") if secure else None
    with node(tiny_model, node_tls) as (host, addr, fs):
        got, kind = tokens(addr, coord_tls)
        assert host.info()["frames_port"] == fs.port
    assert kind is SocketLink
    assert got == reference(tiny_model)


def test_a_node_without_frame_socket_keeps_grpc(tiny_model):
    with node(tiny_model, frames=False) as (host, addr, _):
        got, kind = tokens(addr)
        assert host.info()["frames_port"] is None
    assert kind is GrpcLink
    assert got == reference(tiny_model)


def test_an_unreachable_frame_port_falls_back_to_grpc(tiny_model, caplog):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    with node(tiny_model, frames=False, announce=dead) as (_, addr, _), \
            caplog.at_level(logging.WARNING, "edgeweave.runtime.transport.dial"):
        got, kind = tokens(addr)
    assert kind is GrpcLink
    assert got == reference(tiny_model)
    assert f"frame port {dead}" in caplog.text and "staying on gRPC" in caplog.text


def test_foreign_certificates_and_plaintext_are_refused(tiny_model, fleets):
    ours, foreign = fleets
    with node(tiny_model, TLSFiles.from_dir(ours, "node0")) as (_, addr, fs):
        with pytest.raises(StageUnavailable, match="certificate"):
            SocketLink(addr, "127.0.0.1", fs.port, TLSFiles.from_dir(foreign, "coordinator"),
                       connect_timeout=2).call(Frame(Op.PING), 2)
        plain = SocketLink(addr, "127.0.0.1", fs.port, None, connect_timeout=2)
        with pytest.raises(StageUnavailable):
            plain.call(Frame(Op.PING), 5)  # the node's TLS handshake fails: the link breaks
        plain.close()
        ok = SocketLink(addr, "127.0.0.1", fs.port, TLSFiles.from_dir(ours, "coordinator"))
        assert ok.call(Frame(Op.PING), 5).op == Op.OK  # the node still serves its fleet
        ok.close()


def _send(sock: socket.socket, raw: bytes) -> Frame:
    sock.sendall(struct.pack("<I", len(raw)) + raw)
    f = sock.makefile("rb")
    (n,) = struct.unpack("<I", f.read(4))
    return Frame.unpack(f.read(n))


def test_bad_bytes_get_an_error_and_the_connection_lives_on(tiny_model):
    with node(tiny_model) as (_, _, fs), \
            socket.create_connection(("127.0.0.1", fs.port), timeout=10) as sock:
        resp = _send(sock, b"not a frame at all")
        assert resp.op == Op.ERROR and resp.arg == ErrorCode.BAD_FRAME
        assert b"bad magic" in resp.payload
        assert _send(sock, Frame(Op.PING, seq=7).pack()).seq == 7  # same connection
        # a length beyond the limit cannot be skipped: that connection closes, the node lives
        sock.sendall(struct.pack("<I", MAX_FRAME + 1))
        assert sock.recv(1) == b""
        with socket.create_connection(("127.0.0.1", fs.port), timeout=10) as again:
            assert _send(again, Frame(Op.PING, seq=8).pack()).op == Op.OK


def test_a_closed_node_breaks_the_link_for_good(tiny_model):
    with node(tiny_model) as (_, addr, fs):
        link = dial(addr)
        assert isinstance(link, SocketLink)
        assert link.call(Frame(Op.PING), 5).op == Op.OK
        fs.close()
        with pytest.raises(StageUnavailable):
            link.call(Frame(Op.PING), 5)
        with pytest.raises(StageUnavailable, match="unavailable"):
            link.submit(Frame(Op.PING), 5)
        link.close()


def test_node_cli_refuses_a_bad_frames_port(capsys):
    assert main(["node", "--frames-port", "70000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--frames-port 70000" in err[0]


def test_many_threads_share_one_mtls_link(tiny_model, fleets):
    # 8 threads send big and small frames through one TLS channel (sealed under its lock,
    # sent whole and in order) while the link's reader unseals every answer off the socket
    import threading

    ours, _ = fleets
    with node(tiny_model, TLSFiles.from_dir(ours, "node0")) as (_, addr, fs):
        link = SocketLink(addr, "127.0.0.1", fs.port, TLSFiles.from_dir(ours, "coordinator"))
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                for j in range(40):
                    size = (256 << 10) if (i + j) % 5 == 0 else 8 * j
                    resp = link.call(Frame(Op.PING, payload=bytes([i]) * size), 20)
                    assert resp.op == Op.OK
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        info = link.call(Frame(Op.INFO), 10).json()
        link.close()
    assert errors == []
    assert info["frames_port"] == fs.port


def test_connections_beyond_the_cap_are_closed(tiny_model, monkeypatch):
    import edgeweave.runtime.transport.frame_socket as fs_mod

    monkeypatch.setattr(fs_mod, "MAX_CONNECTIONS", 3)
    with node(tiny_model) as (_, _, fs):
        held = [socket.create_connection(("127.0.0.1", fs.port), timeout=10) for _ in range(3)]
        for i, s in enumerate(held):  # each answered: all three are counted
            assert _send(s, Frame(Op.PING, seq=i + 1).pack()).seq == i + 1
        with socket.create_connection(("127.0.0.1", fs.port), timeout=10) as extra:
            assert extra.recv(1) == b""  # closed at once
        held.pop().close()
        for _ in range(50):  # the freed seat is taken back once its thread has let go
            with socket.create_connection(("127.0.0.1", fs.port), timeout=10) as again:
                try:
                    if _send(again, Frame(Op.PING, seq=9).pack()).seq == 9:
                        break
                except (struct.error, ConnectionError):
                    time.sleep(0.05)
        else:
            raise AssertionError("a freed connection seat was never reused")
        for s in held:
            s.close()


class _OlderNode(StageHost):
    """A node of a build from before INFO announced its reply codecs (no ``top1``)."""

    def info(self):
        return {k: v for k, v in super().info().items() if k != "reply_codecs"}


def test_a_node_of_an_older_build_gets_top64_for_greedy_requests(tiny_model):
    # Prepare: one node of this build, one that announces no reply codecs
    host = _OlderNode("mem")
    n = tiny_model.cfg.num_layers
    host.add_engine(TorchStageEngine(EngineConfig("mem", Shard(0, n, n)), model=tiny_model))
    server, port = serve(host, "127.0.0.1:0")
    try:
        with node(tiny_model) as (_, new_addr, _fs):
            for addr, want in ((f"127.0.0.1:{port}", "top64"), (new_addr, "top1")):
                coord = attach(Plan.single(4, "node0"), "mem", {"node0": addr},
                               tokenizer=None, max_len=64).coordinator
                try:
                    with coord.new_session() as s:
                        # Execute: a greedy request, set up as a server's Generation does
                        s.configure_sampling(PARAMS)
                        got = list(generate_step(s, [1, 4, 9], PARAMS))
                        codec = s.logits_codec
                finally:
                    coord.close()
                # Assert: the codec the node knows, and the tokens a single process gives
                assert codec == want
                assert got == reference(tiny_model)
    finally:
        server.stop(0)
