"""A paho-mqtt 2.x client set up the way the control plane needs it."""

from __future__ import annotations

import socket
import threading
from typing import Any

from edgeweave.errors import RuntimeStageError


def _nodelay(client: Any, userdata: Any, sock: Any) -> None:
    # Nagle + delayed ACK otherwise hold small QoS 1 messages ~40-90 ms on loopback
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def make_client(client_id: str) -> Any:
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                    protocol=mqtt.MQTTv311, clean_session=True)
    c.on_socket_open = _nodelay
    c.reconnect_delay_set(min_delay=1, max_delay=5)
    return c


def connect(client: Any, host: str, port: int, keepalive: int, timeout: float,
            on_connected: Any = None) -> None:
    """Connect, start the network thread and wait for the broker's CONNACK.

    ``on_connected(client)`` runs on every successful (re)connect, on the network thread.
    """
    ready = threading.Event()
    failure: list[str] = []

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            failure.append(str(reason))
        elif on_connected is not None:
            on_connected(c)
        ready.set()

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=keepalive)
    except OSError as e:
        raise RuntimeStageError(f"cannot reach the MQTT broker at {host}:{port} ({e}): start "
                                "mosquitto there or pass the right --mqtt address") from e
    client.loop_start()
    if not ready.wait(timeout) or failure:
        client.loop_stop()
        raise RuntimeStageError(f"the MQTT broker at {host}:{port} did not accept the "
                                f"connection ({failure[0] if failure else 'timeout'})")
