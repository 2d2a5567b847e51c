"""A TCP proxy on loopback that makes a link behave like one: one-way delay and a rate limit.

Tests and benchmarks run every node on 127.0.0.1, where a round trip costs microseconds; a
WAN or Wi-Fi hop costs milliseconds, which is what speculative decoding and pipelined
prefill are for. The kernel's ``netem`` qdisc is not available on these machines (no root,
no ``sch_netem``), so the link is shaped in user space: put a :class:`DelayProxy` between the
coordinator and a node and dial the proxy's address instead of the node's.

Each direction is shaped apart, as a real link is: a chunk read at time ``t`` is written on
at ``t + delay`` at the earliest, and no faster than ``rate_mbit`` (its serialisation time,
``8 * bytes / rate``, queues behind the previous chunk). Order and bytes are kept exactly,
so TLS and gRPC run through it untouched.

A node serves frames on two ports (gRPC, and the frame socket its INFO announces), and a
coordinator dials the second on the host of the first: :class:`NodeDelayProxy` shapes both,
listening on another loopback address (``127.0.0.2``) with the frame socket's own port
number, so the link a coordinator upgrades to is delayed like the one it dialled.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass

from edgeweave.errors import ConfigError
from edgeweave.netaddr import parse_hostport

_CHUNK = 64 << 10


@dataclass(frozen=True)
class LinkShape:
    """One-way ``delay_ms`` and ``rate_mbit`` (0: unlimited) of each direction."""

    delay_ms: float = 0.0
    rate_mbit: float = 0.0

    def __post_init__(self) -> None:
        if not (self.delay_ms >= 0 and self.rate_mbit >= 0):
            raise ConfigError(f"a link shape needs delay_ms >= 0 and rate_mbit >= 0 (got "
                              f"{self.delay_ms}, {self.rate_mbit}); 0 rate means unlimited")

    def serialisation_s(self, nbytes: int) -> float:
        return 0.0 if self.rate_mbit == 0 else 8 * nbytes / (self.rate_mbit * 1e6)


class DelayProxy:
    """Listens on ``host`` (a free port unless ``port``) and forwards every connection
    to ``target`` (``host:port``) through a :class:`LinkShape`; use as a context manager or
    :meth:`start` / :meth:`stop`. :attr:`address` is what to dial instead of the target."""

    def __init__(self, target: str, shape: LinkShape, port: int = 0,
                 host: str = "127.0.0.1") -> None:
        self.target_host, self.target_port = parse_hostport(target, flag="proxy target")
        self.shape = shape
        self._port, self._host = port, host
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="delay-proxy",
                                        daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.address = ""

    def start(self) -> DelayProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, self._host, self._port), self._loop).result(10)
        self.address = f"{self._host}:{self._server.sockets[0].getsockname()[1]}"
        return self

    def stop(self) -> None:
        if self._server is None:
            return

        async def shut() -> None:
            assert self._server is not None
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        with contextlib.suppress(Exception):  # already stopping: nothing left to close
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._server = None

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- one connection: two shaped directions ------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            return
        conn = _Connection((writer, up_w))
        for src, dst in ((reader, up_w), (up_r, writer)):
            task = asyncio.ensure_future(self._direction(src, dst, conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _direction(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                         conn: _Connection) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.ensure_future(self._send(queue, dst))
        clean = False
        try:
            while chunk := await src.read(_CHUNK):
                queue.put_nowait((time.monotonic() + self.shape.delay_ms / 1e3, chunk))
            clean = True
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            queue.put_nowait((0.0, b""))  # end of stream, after what is still in flight
            sent = False
            with contextlib.suppress(Exception):
                sent = await sender
            conn.ended(dst, clean and sent)

    async def _send(self, queue: asyncio.Queue[tuple[float, bytes]],
                    dst: asyncio.StreamWriter) -> bool:
        """Deliver the queued chunks on time; whether all of them went out."""
        free_at = 0.0  # when the link has finished serialising the previous chunk
        try:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    return True
                start = max(due, free_at)
                free_at = start + self.shape.serialisation_s(len(chunk))
                wait = free_at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                dst.write(chunk)
                await dst.drain()
        except ConnectionError:
            return False


class _Connection:
    """The two sockets of one proxied connection. A direction that ends cleanly (its
    source sent EOF) passes the half-close on, so a peer that shuts its write side and
    waits for the answer still gets it; the sockets close when both directions have
    ended, or at once when one broke."""

    def __init__(self, writers: tuple[asyncio.StreamWriter, asyncio.StreamWriter]) -> None:
        self.writers, self.open = writers, 2

    def ended(self, dst: asyncio.StreamWriter, clean: bool) -> None:
        self.open -= 1
        if clean and self.open > 0 and dst.can_write_eof():
            with contextlib.suppress(Exception):
                dst.write_eof()
                return
        for w in self.writers:
            with contextlib.suppress(Exception):
                w.close()


class NodeDelayProxy:
    """:class:`DelayProxy` for a whole node: its gRPC port and the frame socket it announces
    (asked over gRPC at :meth:`start`), both on ``host``; dial :attr:`address`."""

    def __init__(self, target: str, shape: LinkShape, host: str = "127.0.0.2",
                 tls: object = None) -> None:
        self.target, self.shape, self.host, self.tls = target, shape, host, tls
        self._proxies: list[DelayProxy] = []
        self.address = ""

    def start(self) -> NodeDelayProxy:
        from edgeweave.runtime.transport.dial import frames_port, node_info
        from edgeweave.runtime.transport.grpc_link import GrpcLink

        link = GrpcLink(self.target, self.tls)
        try:
            port = frames_port(node_info(link, 10))
        finally:
            link.close()
        try:
            self._proxies.append(DelayProxy(self.target, self.shape, host=self.host).start())
            if port is not None:
                node_host = parse_hostport(self.target, flag="proxy target")[0]
                self._proxies.append(DelayProxy(f"{node_host}:{port}", self.shape, port=port,
                                                host=self.host).start())
        except BaseException:
            self.stop()
            raise
        self.address = self._proxies[0].address
        return self

    def stop(self) -> None:
        for p in self._proxies:
            p.stop()
        self._proxies.clear()

    def __enter__(self) -> NodeDelayProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
