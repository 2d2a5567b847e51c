"""The coordinator side: the fleet's messages in from a source, events out to callbacks.

The source (``control.sources``: a broker subscription, or DNS-SD on the LAN with
``control.mdns``) calls :meth:`FleetMonitor.deliver` on its own thread; that only updates
state, and the events it raises
are queued and delivered by a dispatcher thread, so a slow callback (a failover replaying
sessions takes seconds) never stalls the control plane. A watchdog thread turns heartbeat
silence into ``gone`` for nodes whose connection hangs without closing (the broker would
only notice after 1.5 keep-alives).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from edgeweave.control.client import BrokerAuth
from edgeweave.control.events import EventKind, FleetEvent, MonitorConfig
from edgeweave.control.messages import KINDS, Telemetry, check_name
from edgeweave.control.sources import MqttSource, Source

log = logging.getLogger(__name__)

Callback = Callable[[FleetEvent], None]


@dataclass(frozen=True)
class _Condition:
    """A telemetry reading that raises one event when low and another when recovered."""

    flag: str
    raised: EventKind
    cleared: EventKind
    reading: Callable[[Telemetry], float | None]
    threshold: Callable[[MonitorConfig], tuple[float, float]]  # (low, hysteresis)


CONDITIONS = (
    _Condition("battery_low", EventKind.BATTERY_LOW, EventKind.BATTERY_OK,
               lambda t: None if t.charging else t.battery,
               lambda c: (c.battery_low, c.battery_hysteresis)),
    _Condition("memory_pressure", EventKind.MEMORY_PRESSURE, EventKind.MEMORY_OK,
               lambda t: t.free_memory_mb, lambda c: (c.memory_low_mb, c.memory_hysteresis_mb)),
    _Condition("link_degraded", EventKind.LINK_DEGRADED, EventKind.LINK_OK,
               lambda t: t.link_quality, lambda c: (c.link_low, c.link_hysteresis)),
)


@dataclass
class NodeState:
    device: str
    online: bool = False
    ever_online: bool = False
    profile: dict[str, Any] = field(default_factory=dict)
    heartbeat_s: float | None = None
    last_seen: float = 0.0  # monotonic
    telemetry: Telemetry | None = None
    flags: set[str] = field(default_factory=set)  # active conditions
    gone_reason: str | None = None
    heartbeats: int = 0  # since the node last (re)joined
    ready: bool = False  # READY raised since the node last (re)joined
    links: dict[str, dict[str, Any]] = field(default_factory=dict)  # its peer measurements


class FleetMonitor:
    """Watches ``fleet`` on the broker at ``host:port``, or on ``source`` when given (then
    ``host``, ``port``, ``client_id`` and ``auth`` are unused): :meth:`over` picks one."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, *, fleet: str = "default",
                 config: MonitorConfig | None = None, client_id: str | None = None,
                 auth: BrokerAuth | None = None, source: Source | None = None) -> None:
        self.fleet = check_name("fleet", fleet)
        self.config = config or MonitorConfig()
        self.source: Source = source or MqttSource(host, port, self.fleet, client_id, auth)
        self._nodes: dict[str, NodeState] = {}
        self._lock = threading.Condition()
        self._callbacks: list[tuple[frozenset[EventKind] | None, Callback]] = []
        self._queue: queue.Queue[FleetEvent | None] = queue.Queue()
        self.history: deque[FleetEvent] = deque(maxlen=10_000)
        self.callback_errors: list[BaseException] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- callbacks ---------------------------------------------------------------------------
    def subscribe(self, callback: Callback, kinds: Iterable[EventKind] | None = None) -> None:
        """Call ``callback(event)`` for every event (or only those of ``kinds``)."""
        self._callbacks.append((None if kinds is None else frozenset(kinds), callback))

    def on_device_gone(self, callback: Callable[[str], None]) -> None:
        self.subscribe(lambda e: callback(e.device), [EventKind.GONE])

    @classmethod
    def over(cls, fleet: str, *, mqtt: str | None = None, auth: BrokerAuth | None = None,
             mdns: Any = None, config: MonitorConfig | None = None) -> FleetMonitor:
        """The (unstarted) monitor of ``fleet``: over DNS-SD when ``mdns`` (a
        ``control.mdns.MdnsOptions``) is given, else on the broker at ``mqtt``."""
        if mdns is not None:
            from edgeweave.control.mdns import MdnsSource

            return cls(fleet=fleet, config=config, source=MdnsSource(fleet, mdns))
        from edgeweave.netaddr import parse_hostport

        host, port = parse_hostport(mqtt or "", 1883, "--mqtt")
        return cls(host, port, fleet=fleet, config=config, auth=auth)

    # -- life cycle --------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> FleetMonitor:
        self.source.start(self.deliver, timeout)
        for target, name in ((self._dispatch, "dispatch"), (self._watchdog, "watchdog")):
            t = threading.Thread(target=target, name=f"fleet-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        self.source.stop()
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> FleetMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def publish_status(self, body: bytes) -> None:
        """The server's fleet status, where ``edgeweave fleet status`` reads it."""
        self.source.publish_status(body)

    # -- queries -----------------------------------------------------------------------------
    def nodes(self) -> dict[str, NodeState]:
        """A snapshot of every node heard of."""
        import copy

        with self._lock:
            return copy.deepcopy(self._nodes)

    def online(self) -> list[str]:
        with self._lock:
            return sorted(d for d, n in self._nodes.items() if n.online)

    def wait_for(self, kind: EventKind, device: str | None = None, timeout: float = 10.0,
                 after: float = float("-inf")) -> FleetEvent | None:
        """The first event of ``kind`` (for ``device``) at or after monotonic ``after``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for e in self.history:
                    if e.kind == kind and e.at >= after and device in (None, e.device):
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._lock.wait(left)

    # -- state machine (the source's thread and the watchdog) -------------------------------
    def _emit(self, kind: EventKind, node: NodeState, **detail: Any) -> None:
        ev = FleetEvent(kind, node.device, detail)
        self.history.append(ev)
        self._lock.notify_all()
        self._queue.put(ev)

    def deliver(self, device: str, kind: str, body: dict[str, Any],
                retained: bool = False) -> None:
        """One message of ``device`` (``kind`` one of ``messages.KINDS``), from the source."""
        if kind not in KINDS:
            return
        with self._lock:
            node = self._nodes.setdefault(device, NodeState(device))
            getattr(self, f"_on_{kind}")(node, body, retained)

    def _seen(self, node: NodeState) -> None:
        node.last_seen = time.monotonic()
        if not node.online and node.ever_online:
            node.online, node.gone_reason = True, None
            node.heartbeats, node.ready = 0, False
            self._emit(EventKind.BACK, node)
            self._maybe_ready(node)

    def _maybe_ready(self, node: NodeState) -> None:
        if node.online and not node.ready and node.heartbeats >= self.config.admit_heartbeats:
            node.ready = True
            self._emit(EventKind.READY, node, heartbeats=node.heartbeats)

    def _on_profile(self, node: NodeState, body: dict[str, Any], retained: bool) -> None:
        node.profile = dict(body.get("profile") or {})
        hb = body.get("heartbeat_s")
        node.heartbeat_s = float(hb) if isinstance(hb, (int, float)) and hb > 0 else None

    def _on_status(self, node: NodeState, body: dict[str, Any], retained: bool) -> None:
        if body.get("state") == "online":
            node.last_seen = time.monotonic()
            if not node.ever_online:
                node.online = node.ever_online = True
                node.heartbeats, node.ready = 0, False
                self._emit(EventKind.JOINED, node, retained=retained)
                self._maybe_ready(node)
            else:
                self._seen(node)
        elif body.get("state") == "offline" and node.online:
            self._gone(node, str(body.get("reason", "offline")))

    def _on_heartbeat(self, node: NodeState, body: dict[str, Any], retained: bool) -> None:
        if node.ever_online:  # a heartbeat before any status: wait for the announce
            self._seen(node)
            node.heartbeats += 1
            self._maybe_ready(node)

    def _on_links(self, node: NodeState, body: dict[str, Any], retained: bool) -> None:
        peers = body.get("peers")
        if isinstance(peers, dict):
            node.links = {str(p): dict(m) for p, m in peers.items() if isinstance(m, dict)}

    def _on_telemetry(self, node: NodeState, body: dict[str, Any], retained: bool) -> None:
        t = Telemetry.from_msg(body)
        if t is None:
            return
        node.telemetry = t
        if node.ever_online:
            self._seen(node)
        for cond in CONDITIONS:
            value = cond.reading(t)
            low, hyst = cond.threshold(self.config)
            if value is None:
                continue
            if cond.flag not in node.flags and value < low:
                node.flags.add(cond.flag)
                self._emit(cond.raised, node, value=value, threshold=low)
            elif cond.flag in node.flags and value >= low + hyst:
                node.flags.discard(cond.flag)
                self._emit(cond.cleared, node, value=value, threshold=low + hyst)

    def _gone(self, node: NodeState, reason: str) -> None:
        node.online, node.gone_reason = False, reason
        self._emit(EventKind.GONE, node, reason=reason)

    def _watchdog(self) -> None:
        while not self._stop.wait(self.config.watchdog_period_s):
            now = time.monotonic()
            with self._lock:
                for node in self._nodes.values():
                    period = node.heartbeat_s or self.config.default_heartbeat_s
                    if node.online and now - node.last_seen > self.config.heartbeat_misses * period:
                        self._gone(node, "heartbeat_timeout")

    def _dispatch(self) -> None:
        while (ev := self._queue.get()) is not None:
            for kinds, cb in list(self._callbacks):
                if kinds is not None and ev.kind not in kinds:
                    continue
                try:
                    cb(ev)
                except Exception as e:  # noqa: BLE001 - one bad callback must not stop others
                    log.exception("fleet callback failed on %s", ev)
                    self.callback_errors.append(e)
