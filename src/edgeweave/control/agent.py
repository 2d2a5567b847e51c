"""The node side: announce a profile, heartbeat, report telemetry, leave a last will.

``python -m edgeweave.control.agent --port 1883 --device pi-1`` runs one until SIGTERM
(clean: a retained ``offline``/``clean`` status). If the process dies any other way, the
broker publishes the will (``offline``/``lost``) the moment it sees the socket close, or
after 1.5 keep-alive periods when the network silently drops it.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from collections.abc import Callable
from typing import Any

from edgeweave.control.client import BrokerAuth, connect, make_client
from edgeweave.control.messages import (
    Telemetry,
    check_name,
    decode,
    encode,
    parse_topic,
    profile_dict,
    topic,
)
from edgeweave.errors import ConfigError


class NodeAgent:
    def __init__(self, device: str, host: str = "127.0.0.1", port: int = 1883, *,
                 fleet: str = "default", profile: Any = None, heartbeat_s: float = 1.0,
                 telemetry_s: float | None = None,
                 sampler: Callable[[], Telemetry] = Telemetry.sample,
                 auth: BrokerAuth | None = None) -> None:
        if heartbeat_s <= 0 or (telemetry_s is not None and telemetry_s <= 0):
            raise ConfigError("heartbeat_s and telemetry_s must be > 0")
        self.device, self.fleet = check_name("device", device), check_name("fleet", fleet)
        self.host, self.port = host, port
        self.profile = profile_dict(profile)
        self.heartbeat_s, self.telemetry_s, self.sampler = heartbeat_s, telemetry_s, sampler
        # the broker drops a silent client after 1.5 keep-alives; heartbeats keep it busy
        self.keepalive = max(5, int(3 * heartbeat_s))
        self._client = make_client(f"edgeweave-node-{fleet}-{device}", auth)
        self._peer_cb: Callable[[str, dict[str, Any]], None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seq = 0

    def _t(self, kind: str) -> str:
        return topic(self.fleet, self.device, kind)

    def watch_peers(self, callback: Callable[[str, dict[str, Any]], None]) -> None:
        """Call ``callback(device, profile)`` for every other node's announcement (retained
        ones at once), on the MQTT network thread: keep it short. Call before :meth:`start`."""
        self._peer_cb = callback

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        parsed = parse_topic(msg.topic)
        body = decode(msg.payload) if parsed else None
        if (parsed is None or body is None or parsed[0] != self.fleet or parsed[1] == self.device
                or self._peer_cb is None):
            return
        self._peer_cb(parsed[1], dict(body.get("profile") or {}))

    def publish_links(self, peers: dict[str, dict[str, Any]]) -> None:
        """What this node measured to its peers (retained: a server that starts later sees it)."""
        self._client.publish(self._t("links"), encode(self.device, peers=peers), qos=1,
                             retain=True)

    def _announce(self, c: Any) -> None:
        if self._peer_cb is not None:
            c.subscribe(f"edgeweave/{self.fleet}/node/+/profile", qos=1)
        c.publish(self._t("profile"), encode(self.device, profile=self.profile,
                                             heartbeat_s=self.heartbeat_s), qos=1, retain=True)
        c.publish(self._t("status"), encode(self.device, state="online", reason="start"),
                  qos=1, retain=True)

    def start(self, timeout: float = 10.0) -> NodeAgent:
        self._client.will_set(self._t("status"),
                              encode(self.device, state="offline", reason="lost"),
                              qos=1, retain=True)
        self._client.on_message = self._on_message
        connect(self._client, self.host, self.port, self.keepalive, timeout,
                on_connected=self._announce)  # re-announces after every reconnect
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.device}",
                                        daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        since_telemetry = 0.0
        while not self._stop.wait(self.heartbeat_s):
            self._seq += 1
            self._client.publish(self._t("heartbeat"), encode(self.device, seq=self._seq), qos=0)
            since_telemetry += self.heartbeat_s
            if self.telemetry_s is not None and since_telemetry >= self.telemetry_s:
                since_telemetry = 0.0
                self.publish_telemetry(self.sampler(), wait=False)

    def publish_telemetry(self, t: Telemetry, wait: bool = True, timeout: float = 5.0) -> None:
        info = self._client.publish(self._t("telemetry"), encode(
            self.device, free_memory_mb=t.free_memory_mb, battery=t.battery,
            charging=t.charging, link_quality=t.link_quality), qos=1)
        if wait:
            info.wait_for_publish(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Leave cleanly: a retained ``offline``/``clean`` status, then DISCONNECT (no will)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        info = self._client.publish(self._t("status"),
                                    encode(self.device, state="offline", reason="clean"),
                                    qos=1, retain=True)
        with contextlib.suppress(RuntimeError):  # not connected any more: the will covers it
            info.wait_for_publish(timeout)
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> NodeAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def host_profile() -> dict[str, Any]:
    """What a node can say about itself without a device catalog entry."""
    import os

    import psutil

    return {"cpus": os.cpu_count(), "memory_bytes": psutil.virtual_memory().total}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="edgeweave control-plane agent of one node")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--device", required=True)
    p.add_argument("--fleet", default="default")
    p.add_argument("--heartbeat", type=float, default=1.0, help="seconds between heartbeats")
    p.add_argument("--telemetry", type=float, default=None, help="seconds between readings")
    a = p.parse_args(argv)
    agent = NodeAgent(a.device, a.host, a.port, fleet=a.fleet, heartbeat_s=a.heartbeat,
                      telemetry_s=a.telemetry, profile=host_profile()).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"agent {a.device} online", flush=True)
    done.wait()
    agent.stop()


if __name__ == "__main__":
    main()
