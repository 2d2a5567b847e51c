"""A paho-mqtt 2.x client set up the way the control plane needs it.

:class:`BrokerAuth` is how every control-plane party (node agent, monitor, ``fleet status``)
logs in: mosquitto's own settings, a username/password (``password_file``) and TLS with a CA
(``cafile``), optionally a client certificate (``require_certificate``).
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeweave.errors import ConfigError, RuntimeStageError

PASSWORD_ENV = "EDGEWEAVE_MQTT_PASSWORD"


@dataclass(frozen=True)
class BrokerAuth:
    """Credentials for the broker. ``ca``: the CA that signed the broker's certificate (TLS
    on); ``cert``/``key``: this client's certificate, for a broker that requires one. The
    password is never printed (``repr`` hides it)."""

    username: str | None = None
    password: str | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if self.password is not None and not self.username:
            raise ConfigError("an MQTT password needs a username: pass --mqtt-user NAME")
        if (self.cert is None) != (self.key is None):
            raise ConfigError("an MQTT client certificate needs both --mqtt-cert and --mqtt-key")
        if self.cert is not None and self.ca is None:
            raise ConfigError("an MQTT client certificate needs --mqtt-ca (TLS to the broker)")
        for label, p in (("CA", self.ca), ("certificate", self.cert), ("key", self.key)):
            if p is not None and not Path(p).is_file():
                raise ConfigError(f"MQTT TLS {label} file {p} does not exist: pass the PEM file "
                                  "the broker's certificate was signed with (--mqtt-ca)")

    def __repr__(self) -> str:
        return (f"BrokerAuth(username={self.username!r}, password={'***' if self.password else None}"
                f", ca={self.ca!r}, cert={self.cert!r})")

    @property
    def tls(self) -> bool:
        return self.ca is not None

    @classmethod
    def from_options(cls, username: str | None = None, password_file: str | None = None,
                     ca: str | None = None, cert: str | None = None,
                     key: str | None = None) -> BrokerAuth:
        """The CLI's options: the password from a file (kept out of ``ps``) or from
        ``$EDGEWEAVE_MQTT_PASSWORD``."""
        password = None
        if password_file:
            try:
                password = Path(password_file).read_text().strip()
            except OSError as e:
                raise ConfigError(f"cannot read --mqtt-password-file {password_file}: {e}") from e
        elif os.environ.get(PASSWORD_ENV):
            password = os.environ[PASSWORD_ENV]
        return cls(username or None, password, *(Path(p) if p else None for p in (ca, cert, key)))

    def apply(self, client: Any) -> None:
        if self.username:
            client.username_pw_set(self.username, self.password)
        if self.ca is not None:
            import ssl

            client.tls_set(ca_certs=str(self.ca),
                           certfile=None if self.cert is None else str(self.cert),
                           keyfile=None if self.key is None else str(self.key),
                           cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)


NO_AUTH = BrokerAuth()


def _nodelay(client: Any, userdata: Any, sock: Any) -> None:
    # Nagle + delayed ACK otherwise hold small QoS 1 messages ~40-90 ms on loopback
    raw = getattr(sock, "_sock", sock)  # paho wraps TLS sockets
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    elif isinstance(raw, socket.socket):
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def make_client(client_id: str, auth: BrokerAuth | None = None) -> Any:
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                    protocol=mqtt.MQTTv311, clean_session=True)
    c.on_socket_open = _nodelay
    c.reconnect_delay_set(min_delay=1, max_delay=5)
    (auth or NO_AUTH).apply(c)
    return c


def connect(client: Any, host: str, port: int, keepalive: int, timeout: float,
            on_connected: Any = None) -> None:
    """Connect, start the network thread and wait for the broker's CONNACK.

    ``on_connected(client)`` runs on every successful (re)connect, on the network thread.
    A refused login (bad or missing username/password, a certificate the broker does not
    trust) raises :class:`RuntimeStageError` saying so.
    """
    ready = threading.Event()
    failure: list[str] = []

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            failure.append(str(reason))
            c.disconnect()  # no reconnect loop with credentials the broker refuses
        elif on_connected is not None:
            on_connected(c)
        ready.set()

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=keepalive)
    except OSError as e:  # ssl.SSLError is an OSError: an untrusted broker certificate
        raise RuntimeStageError(f"cannot reach the MQTT broker at {host}:{port} ({e}): start "
                                "mosquitto there, pass the right --mqtt address, and with TLS "
                                "the CA that signed the broker's certificate (--mqtt-ca)") from e
    client.loop_start()
    if not ready.wait(timeout) or failure:
        client.loop_stop()
        why = failure[0] if failure else "timeout"
        refused = bool(failure) and any(w in why.lower() for w in ("authori", "password"))
        hint = (": check --mqtt-user and the password (--mqtt-password-file or "
                f"${PASSWORD_ENV})" if refused else "")
        raise RuntimeStageError(f"the MQTT broker at {host}:{port} did not accept the "
                                f"connection ({why}){hint}")
