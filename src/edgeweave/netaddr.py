"""Addresses a user types: listen hosts and ``HOST:PORT`` specs, checked before anything loads.

One parser for every verb (``node --host``, ``serve --host/--port``, ``--mqtt HOST:PORT``,
``--node DEVICE=HOST:PORT``), so a bad address is one line with the fix, never a traceback
after a slow model load.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket

from edgeweave.errors import ConfigError

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")  # one RFC 1123 host name label
_FIX = "pass an address of this host, e.g. 127.0.0.1 (loopback only) or 0.0.0.0 (every interface)"


def bare_host(host: str) -> str:
    """``[::1]`` -> ``::1``; other hosts unchanged."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def check_host(host: str, flag: str = "--host") -> None:
    """``host`` is an IP address or a resolvable host name."""
    bare = bare_host(host)
    try:
        ipaddress.ip_address(bare)
        return
    except ValueError:
        pass
    # dotted digits that are no IPv4 address (999.1.1.1) must not reach the resolver: it
    # would ask DNS and, offline, hang until its timeout
    if (not bare or re.fullmatch(r"[0-9.]+", bare) or len(bare) > 253
            or not all(_LABEL.fullmatch(label) for label in bare.rstrip(".").split("."))):
        raise ConfigError(f"{flag} {host!r} is not an IP address or a host name: {_FIX}")
    try:
        socket.getaddrinfo(bare, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise ConfigError(f"{flag} {host!r} does not resolve to an address: {_FIX}") from None


def check_port(port: int, flag: str = "--port") -> None:
    if not 0 <= port <= 65535:
        raise ConfigError(f"{flag} {port} is not in [0, 65535]: pass a free port, or 0 to pick one")


def check_bindable(host: str, port: int, flag: str = "--port") -> None:
    """Fail now if ``host:port`` cannot be listened on (taken, or not this host's address)."""
    check_host(host)
    check_port(port, flag)
    if port == 0:
        return
    bare = bare_host(host)
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # as the servers themselves do, so a port in TIME_WAIT is not reported taken
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((bare, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(f"{flag} {port} on {host} is taken by another process: stop "
                                  "it or pick another port") from None
            raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror}): {_FIX}") from None


def split_hostport(spec: str) -> tuple[str, str] | None:
    """``HOST:PORT`` or ``[v6]:PORT`` -> ``(host, port text)``: brackets removed, neither part
    checked (the port text is "" when there is none). None when the text has no such shape: an
    unbracketed host with a colon in it (a bare IPv6 address), text after ``]``, an open ``[``.
    """
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        return host, rest[1:]
    host, sep, port_s = spec.rpartition(":")
    if not sep:
        return spec, ""
    return None if ":" in host else (host, port_s)


def parse_hostport(spec: str, default_port: int | None = None, flag: str = "address"
                   ) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> ``(host, port)``; a bare host takes ``default_port``."""
    spec = spec.strip()
    split = split_hostport(spec)
    host, port_s = split or ("", "")
    if not port_s and default_port is not None:
        port_s = str(default_port)
    if split is None or not host or not port_s.isdigit():
        raise ConfigError(f"{flag} {spec!r} must look like HOST:PORT, e.g. 127.0.0.1:1883")
    port = int(port_s)
    check_port(port, flag)
    return host, port
