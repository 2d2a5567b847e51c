"""The node's fast data path: the same frames, length-prefixed on one TCP connection.

gRPC's Python API runs a bidirectional stream on extra threads (a request consumer and a
response reader on the client, a handler on the server), and each message crosses them:
on loopback a frame's round trip measured 400-420 us through :class:`GrpcLink` against
120-150 us here (and 80-100 us with no reader thread; ``benchmarks/runtime.py`` has the
fleet's figures). A 3-stage fleet pays that once per stage per token, so the node serves
this socket beside its gRPC port and announces it in INFO (``frames_port``);
:func:`edgeweave.runtime.transport.dial.dial` upgrades a link to it. gRPC stays the
control path and the fallback for nodes that announce none.

Wire: a ``u32`` little-endian length, then one packed :class:`Frame`; each direction
carries frames in order, and a node answers one connection's frames in the order they
came, as on the gRPC stream. With ``tls`` both ends do mutual TLS with the fleet's
certificates (the trust rule of ``security.tls``: the fleet CA, the name
``FLEET_HOSTNAME``). A length beyond :data:`MAX_FRAME` closes the connection: the stream
cannot be resynchronised after it, so the peer sees the link break, not a wrong answer.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgeweave.errors import RuntimeStageError
from edgeweave.runtime.transport.answers import Answers
from edgeweave.runtime.transport.base import StageUnavailable
from edgeweave.runtime.transport.frame import Frame

if TYPE_CHECKING:
    from edgeweave.runtime.stage import StageHost

MAX_FRAME = 256 << 20  # as gRPC's message limit on the stage channels
# a coordinator holds one connection per node; a flood of idle ones must not cost a thread each
MAX_CONNECTIONS = 64
_LEN = struct.Struct("<I")
# a dead peer whose host vanished (no FIN) surfaces within seconds, as gRPC's keepalive does
_KEEPALIVE = (("TCP_KEEPIDLE", 2), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 2))


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one small frame per token
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in _KEEPALIVE:
        if hasattr(socket, name):  # Linux names; other systems keep their defaults
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _read_exact(f: Any, n: int) -> bytes | None:
    data = f.read(n)
    return data if data is not None and len(data) == n else None


def read_frame(f: Any) -> bytes | None:
    """One frame's bytes from a buffered reader; None at a clean end of stream."""
    head = _read_exact(f, _LEN.size)
    if head is None:
        return None
    (n,) = _LEN.unpack(head)
    if n > MAX_FRAME:
        raise RuntimeStageError(f"a frame of {n} bytes announced, over the {MAX_FRAME}-byte "
                                "limit: the peer is not an edgeweave node or link")
    body = _read_exact(f, n)
    if body is None:
        raise RuntimeStageError(f"the connection closed inside a frame of {n} bytes")
    return body


def _server_context(tls: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls.ca))
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    ctx.verify_mode = ssl.CERT_REQUIRED  # a client our CA did not sign is refused
    return ctx


def _client_context(tls: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca))
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    return ctx


class FrameServer:
    """Serves ``host`` on a TCP port: a thread per connection answers its frames in order."""

    def __init__(self, host: StageHost, address: str = "127.0.0.1", port: int = 0,
                 tls: Any = None) -> None:
        self.host = host
        self._ctx = _server_context(tls) if tls is not None else None
        family = socket.AF_INET6 if ":" in address.strip("[]") else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((address.strip("[]"), port))
        except OSError as e:
            self._sock.close()
            raise RuntimeStageError(f"cannot listen for frames on {address}:{port} ({e}): "
                                    "pick another --frames-port, or 0 for a free one") from None
        self._sock.listen(64)
        self.port: int = self._sock.getsockname()[1]
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._accept = threading.Thread(target=self._serve, name=f"frames-{self.port}",
                                        daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._connection, args=(conn,), daemon=True,
                             name=f"frames-{self.port}-conn").start()

    def _connection(self, conn: socket.socket) -> None:
        with self._lock:  # counted before the handshake: a flood of them is refused too
            if self._closed or len(self._conns) >= MAX_CONNECTIONS:
                conn.close()
                return
            self._conns.add(conn)
        plain, reader = conn, None
        try:
            _tune(conn)
            if self._ctx is not None:
                conn.settimeout(10.0)  # a peer that never finishes its handshake lets go
                conn = self._ctx.wrap_socket(conn, server_side=True)
                conn.settimeout(None)
                with self._lock:  # the TLS socket owns the descriptor now
                    self._conns.discard(plain)
                    self._conns.add(conn)
            reader = conn.makefile("rb")
            while (raw := read_frame(reader)) is not None:
                out = self.host.handle_bytes(raw)
                conn.sendall(_LEN.pack(len(out)) + out)
        except (OSError, ssl.SSLError, RuntimeStageError):
            pass  # a failed handshake, a peer gone or broken framing: this connection only
        finally:
            with self._lock:
                self._conns.discard(plain)
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                if reader is not None:
                    reader.close()
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._conns = list(self._conns), set()
        with contextlib.suppress(OSError):
            self._sock.close()
        for conn in conns:  # shutdown wakes the connection threads blocked in recv
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class SocketLink:
    """A :class:`~edgeweave.runtime.transport.base.Link` over :class:`FrameServer`'s
    socket; same contract as ``GrpcLink``: answers matched by ``seq``, many threads may wait
    on one node, and a broken connection or a missed deadline breaks the link for good."""

    parallel = True
    reply_codecs: tuple[str, ...] | None = None  # as ``GrpcLink``'s

    def __init__(self, address: str, host: str, port: int, tls: Any = None,
                 connect_timeout: float = 10.0) -> None:
        self.address = address  # the node's gRPC address: how the fleet names it
        sock = None
        try:
            sock = socket.create_connection((host.strip("[]"), port), timeout=connect_timeout)
            _tune(sock)
            self._chan: _PlainChannel | _TlsChannel = (
                _PlainChannel(sock) if tls is None else _TlsChannel(sock, tls, connect_timeout))
            sock.settimeout(None)
        except (OSError, ssl.SSLError) as e:
            if sock is not None:
                sock.close()
            raise StageUnavailable(f"cannot reach the frame port {port} of stage node {address} "
                                   f"({e}): is it running, and does its certificate come from "
                                   "this fleet's CA?") from None
        self._sock = sock
        self._answers = Answers(address)
        self._reader = threading.Thread(target=self._read, name=f"frames-link-{address}",
                                        daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while (raw := read_frame(self._chan)) is not None:
                self._answers.resolve(Frame.unpack(raw))
            reason = "the node closed the connection"
        except (OSError, ssl.SSLError, RuntimeStageError) as e:
            reason = f"{type(e).__name__}: {e}"
        self._answers.fail(reason)

    def call(self, frame: Frame, timeout: float) -> Frame:
        return self.submit(frame, timeout)()

    def submit(self, frame: Frame, timeout: float) -> Callable[[], Frame]:
        fut = self._answers.register(frame)
        data = frame.pack()
        try:
            self._chan.send(_LEN.pack(len(data)) + data)
        except (OSError, ssl.SSLError) as e:
            self._answers.fail(f"sending failed: {e}")
            self._shutdown()
        return self._answers.waiter(fut, timeout, self._shutdown)

    def _shutdown(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._answers.fail("link closed")
        self._shutdown()
        with contextlib.suppress(OSError):
            self._sock.close()


class _PlainChannel:
    """A TCP socket: many senders (a lock keeps their frames whole), one reader."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock, self._send_lock = sock, threading.Lock()
        self._file = sock.makefile("rb")

    def send(self, data: bytes) -> None:
        with self._send_lock:
            self._sock.sendall(data)

    def read(self, n: int) -> bytes:
        return self._file.read(n)


class _TlsChannel:
    """Mutual TLS over a TCP socket where one thread reads while others send.

    OpenSSL forbids ``SSL_read`` and ``SSL_write`` on one connection from two threads at
    once (a blocking ``SSLSocket`` read beside a send corrupts it), so the TLS state is an
    ``SSLObject`` over memory buffers, touched only under ``_tls``; the socket itself, which
    is full duplex, is read and written outside that lock. Records leave in the order they
    were sealed (``_send`` is held across both)."""

    def __init__(self, sock: socket.socket, tls: Any, timeout: float) -> None:
        from edgeweave.security.tls import FLEET_HOSTNAME

        self._sock = sock
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._obj = _client_context(tls).wrap_bio(self._in, self._out,
                                                  server_hostname=FLEET_HOSTNAME)
        self._tls, self._send = threading.Lock(), threading.Lock()
        self._buf = bytearray()
        self._eof = False
        sock.settimeout(timeout)
        while True:  # the handshake, before any other thread has the channel
            try:
                self._obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    raise ConnectionError("the node closed the connection during the TLS "
                                          "handshake") from None
        self._flush()

    def _flush(self) -> None:
        """Send what the TLS state has sealed (caller holds ``_send``, or is alone)."""
        with self._tls:
            out = self._out.read()
        if out:
            self._sock.sendall(out)

    def _fill(self) -> bool:
        data = self._sock.recv(1 << 16)
        if not data:
            return False
        with self._tls:
            self._in.write(data)
        return True

    def send(self, data: bytes) -> None:
        with self._send:
            with self._tls:
                self._obj.write(data)
            self._flush()

    def read(self, n: int) -> bytes:
        """Up to ``n`` plaintext bytes, fewer only at the end of the stream (one reader)."""
        while len(self._buf) < n and not self._eof:
            with self._tls:
                try:
                    while chunk := self._obj.read(1 << 16):
                        self._buf += chunk
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLZeroReturnError:  # the node's close_notify
                    self._eof = True
                reply = self._out.pending > 0  # TLS 1.3 may answer a key update
            if reply:
                with self._send:
                    self._flush()
            if len(self._buf) < n and not self._eof and not self._fill():
                self._eof = True
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out
