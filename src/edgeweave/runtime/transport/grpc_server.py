"""The gRPC face of a node: one bidirectional stream method carrying frames both ways.

A :class:`~edgeweave.runtime.stage.StageHost` is transport-free; :func:`serve` exposes it
(generic handlers, no protoc: the frames are bytes), and
:class:`~edgeweave.runtime.transport.grpc_link.GrpcLink` dials it with the same options.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from edgeweave.errors import RuntimeStageError
from edgeweave.netaddr import check_port, split_hostport

if TYPE_CHECKING:
    from edgeweave.runtime.stage import StageHost

SERVICE = "edgeweave.Stage"
METHOD = f"/{SERVICE}/Stream"
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 256 << 20),
    ("grpc.max_receive_message_length", 256 << 20),
    ("grpc.keepalive_time_ms", 2000),  # dead peers surface within seconds, not minutes
    ("grpc.keepalive_timeout_ms", 2000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 1000),
]
# gRPC sets SO_REUSEPORT on listeners by default, so a second node on a taken port "starts"
# and the kernel splits new connections between the two processes (a plaintext node beside
# a mutual-TLS one, seen in the probe battery). A taken port must be an error instead.
SERVER_OPTIONS = [*GRPC_OPTIONS, ("grpc.so_reuseport", 0)]


def serve(host: StageHost, address: str = "127.0.0.1:0", tls: Any = None,
          max_workers: int = 16) -> tuple[Any, int]:
    """Start a gRPC server for ``host``; returns ``(server, port)``. ``tls`` is a
    ``security.tls.TLSFiles`` (mutual TLS) or None (plaintext, loopback only)."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    def stream(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        for raw in requests:
            yield host.handle_bytes(raw)

    _check_address(address)
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Stream": grpc.stream_stream_rpc_method_handler(stream)})
    server = grpc.server(ThreadPoolExecutor(max_workers=max_workers), handlers=[handler],
                         options=SERVER_OPTIONS)
    try:
        port = (server.add_secure_port(address, tls.server_credentials()) if tls is not None
                else server.add_insecure_port(address))
    except RuntimeError:  # grpcio >= 1.60 raises where older versions returned 0
        port = 0
    if port == 0:
        raise RuntimeStageError(f"cannot listen on {address}: the port is taken or the address "
                                f"is not one of this host's: check --host, or {_FIX}")
    server.start()
    return server, port


_FIX = "stop the process that holds it, or pick another --port (0 picks a free one)"


def _check_address(address: str) -> None:
    """Refuse a port out of range (gRPC would wrap 99999 to 34463) or one another process
    listens on, before gRPC tries: its bind failure is also checked, but it prints a C-level
    log line first. A plain bind with SO_REUSEADDR succeeds beside TIME_WAIT leftovers of a
    previous node, as gRPC's own bind does, and fails only on a listener."""
    import socket

    split = split_hostport(address)
    if split is None or not split[1].isdigit():
        return  # other forms (a unix: socket, a bare IPv6 host) are left to gRPC
    host, port = split[0], int(split[1])
    check_port(port, f"cannot listen on {address}: port")
    if port == 0:
        return  # a free port is picked by the kernel
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError):
        return  # gRPC's bind reports it
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise RuntimeStageError(f"cannot listen on {address}: port {port} is taken "
                                            f"(another node or program listens there): {_FIX}"
                                            ) from None
