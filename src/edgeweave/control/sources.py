"""Where a :class:`~edgeweave.control.monitor.FleetMonitor` hears the fleet from: a source.

A source turns its transport's messages into calls of ``deliver(device, kind, body,
retained)``, with ``kind`` one of :data:`~edgeweave.control.messages.KINDS` and ``body`` the
JSON object an MQTT message of that kind carries (``profile`` with ``profile`` and
``heartbeat_s``, ``status`` with ``state`` and ``reason``, ``heartbeat``, ``links`` with
``peers``, ``telemetry``). The monitor's state machine (joins, admission after heartbeats,
departures, telemetry conditions, the heartbeat watchdog) is the same for every source.

* :class:`MqttSource`: a subscription on the fleet's broker (``serve --mqtt``);
* ``control.mdns.MdnsSource``: DNS-SD on the LAN, no broker (``serve --discover mdns``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from edgeweave.control.client import BrokerAuth, connect, make_client
from edgeweave.control.messages import decode, parse_topic, server_topic, subscription

Deliver = Callable[[str, str, dict[str, Any], bool], None]


class Source(Protocol):
    fleet: str

    def start(self, deliver: Deliver, timeout: float) -> None:
        """Begin calling ``deliver``; raise (and leave nothing running) if it cannot."""

    def stop(self) -> None: ...

    def publish_status(self, body: bytes) -> None:
        """Make the server's fleet status readable to ``edgeweave fleet status`` (a source
        without anywhere to keep it drops it)."""

    @property
    def join_hint(self) -> str:
        """The command that adds a node to this fleet (for 'not enough nodes' errors)."""
        ...


class MqttSource:
    """The fleet's subtree on a broker (``edgeweave/<fleet>/node/+/+``); retained messages
    arrive first, flagged ``retained``."""

    def __init__(self, host: str, port: int, fleet: str, client_id: str | None = None,
                 auth: BrokerAuth | None = None) -> None:
        self.host, self.port, self.fleet = host, port, fleet
        self._client = make_client(client_id or f"edgeweave-monitor-{fleet}-{id(self):x}", auth)
        self._deliver: Deliver | None = None

    @property
    def join_hint(self) -> str:
        return f"edgeweave node --mqtt {self.host}:{self.port} --fleet {self.fleet}"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        parsed = parse_topic(msg.topic)
        body = decode(msg.payload) if parsed else None
        if parsed is None or body is None or parsed[0] != self.fleet or self._deliver is None:
            return
        self._deliver(parsed[1], parsed[2], body, bool(msg.retain))

    def start(self, deliver: Deliver, timeout: float) -> None:
        self._deliver = deliver
        self._client.on_message = self._on_message
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *a: subscribed.set()
        connect(self._client, self.host, self.port, keepalive=10, timeout=timeout,
                on_connected=lambda c: c.subscribe(subscription(self.fleet), qos=1))
        if not subscribed.wait(timeout):
            self.stop()
            raise TimeoutError(f"no SUBACK from the broker at {self.host}:{self.port}")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=1, retain=retain)

    def publish_status(self, body: bytes) -> None:
        self.publish(server_topic(self.fleet), body, retain=True)
