"""A node measures the links to the peers it sees: a few gRPC pings, bounded.

For each peer announcement (new, or with a new address) the node opens one gRPC channel
(mutual TLS with its own fleet certificate when it has one), sends :data:`SMALL_PINGS` empty
``PING`` frames (round-trip time: the best of them) and :data:`BULK_PINGS` pings carrying
:data:`BULK_BYTES` (the extra time over an empty ping is the upload of the payload: the
node-to-peer throughput), then closes the channel. At most :data:`MAX_PEERS` peers are
measured, one at a time on one thread, each exchange bounded by ``timeout_s``; the results
are published as the node's retained ``links`` message.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

SMALL_PINGS = 5
BULK_PINGS = 2
# 256 KiB: large enough that loopback's ~1 GB/s shows as transfer time over the ~0.3 ms of a
# gRPC round trip, small enough for a 1 Mbit/s link to finish within the timeout
BULK_BYTES = 256 << 10
MAX_PEERS = 32


@dataclass(frozen=True)
class PeerMeasure:
    rtt_s: float
    up_bps: float  # bits/s from this node to the peer
    pings: int
    at: float  # wall-clock time of the measurement

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_peer(address: str, tls: Any = None, timeout_s: float = 2.0) -> PeerMeasure:
    """Ping ``address`` (a node's gRPC endpoint, or the frame socket it announces); raises
    ``StageUnavailable`` if it is not reachable (or its certificate is not from this fleet's
    CA)."""
    from edgeweave.runtime.transport.dial import dial
    from edgeweave.runtime.transport.frame import Frame, Op

    link = dial(address, tls, connect_timeout=timeout_s)  # the path frames will take
    try:
        def ping(n: int) -> float:
            t0 = time.perf_counter()
            link.call(Frame(Op.PING, payload=b"\0" * n), timeout_s)
            return time.perf_counter() - t0

        rtt = min(ping(0) for _ in range(SMALL_PINGS))
        bulk = min(ping(BULK_BYTES) for _ in range(BULK_PINGS))
    finally:
        link.close()
    # a transfer faster than the clock can tell is still finite: 1 us floor
    return PeerMeasure(rtt, 8 * BULK_BYTES / max(bulk - rtt, 1e-6),
                       SMALL_PINGS + BULK_PINGS, time.time())


class PeerProber:
    """Measures every peer the agent sees (``agent.watch_peers``) and publishes the results
    (``agent.publish_links``); runs on its own daemon thread until :meth:`stop`."""

    def __init__(self, agent: Any, tls: Any = None, timeout_s: float = 2.0,
                 max_peers: int = MAX_PEERS) -> None:
        self.agent, self.tls, self.timeout_s, self.max_peers = agent, tls, timeout_s, max_peers
        self.results: dict[str, PeerMeasure] = {}
        self._addresses: dict[str, str] = {}  # what each result was measured at
        self._todo: queue.SimpleQueue[tuple[str, str] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="peer-prober", daemon=True)
        agent.watch_peers(self._seen)

    def start(self) -> PeerProber:
        self._thread.start()
        return self

    def _seen(self, device: str, profile: dict[str, Any]) -> None:  # MQTT network thread
        address = profile.get("address")
        if isinstance(address, str) and self._addresses.get(device) != address:
            self._todo.put((device, address))

    def _run(self) -> None:
        while (item := self._todo.get()) is not None:
            device, address = item
            if self._addresses.get(device) == address:
                continue
            if device not in self.results and len(self.results) >= self.max_peers:
                continue
            try:
                m = measure_peer(address, self.tls, self.timeout_s)
            except Exception as e:  # noqa: BLE001 - unreachable or foreign: not measured
                log.info("cannot measure peer %s at %s: %s", device, address, e)
                self._addresses[device] = address  # not again until it moves
                continue
            self._addresses[device] = address
            self.results[device] = m
            self.agent.publish_links({d: r.to_dict() for d, r in self.results.items()})

    def stop(self) -> None:
        self._todo.put(None)
        self._thread.join(5)
