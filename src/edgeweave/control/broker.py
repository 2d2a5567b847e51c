"""Run Debian's ``mosquitto`` on loopback (tests, demos, a single-box fleet).

Install with ``apt-get install -y mosquitto``. ``set_tcp_nodelay true`` matters: without it
QoS 1 round trips take ~88 ms on loopback (Nagle + delayed ACK) instead of ~1 ms.

``users`` (name -> password) turns anonymous access off and writes a password file with
``mosquitto_passwd``; ``tls`` (:class:`~edgeweave.security.tls.TLSFiles`, e.g. a ``broker``
certificate from ``edgeweave certs issue``) makes the listener TLS-only, clients verifying it
against the fleet CA. These are mosquitto's own settings, as a real deployment sets them.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeweave.errors import ConfigError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def find_mosquitto() -> str:
    exe = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if Path(p).is_file()), None)
    if exe is None:
        raise ConfigError("the MQTT broker 'mosquitto' is not installed: "
                          "apt-get update && apt-get install -y mosquitto")
    return exe


class Mosquitto:
    """A broker process on ``host:port`` with a throw-away config; stop() ends it."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, *,
                 users: Mapping[str, str] | None = None, tls: Any = None) -> None:
        self.host, self.port = host, port or free_port(host)
        self.users, self.tls = dict(users or {}), tls
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Mosquitto:
        exe = find_mosquitto()
        self._dir = tempfile.TemporaryDirectory(prefix="edgeweave-mqtt-")
        conf = Path(self._dir.name) / "mosquitto.conf"
        auth = "allow_anonymous true\n"
        if self.users:
            passwd = Path(self._dir.name) / "passwd"
            passwd.write_text("")
            tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
            for name, pw in self.users.items():  # -b: batch mode, the password as argument
                subprocess.run([tool, "-b", str(passwd), name, pw], check=True,
                               capture_output=True)
            passwd.chmod(0o600)
            auth = f"allow_anonymous false\npassword_file {passwd}\n"
        if self.tls is not None:
            auth += (f"cafile {self.tls.ca}\ncertfile {self.tls.cert}\n"
                     f"keyfile {self.tls.key}\ntls_version tlsv1.2\n")
        import getpass

        # run as whoever starts it: started by root, mosquitto would otherwise switch to its
        # own user, which cannot read our temporary password file and certificates
        conf.write_text(
            f"user {getpass.getuser()}\n"
            f"listener {self.port} {self.host}\n"
            + auth +
            "set_tcp_nodelay true\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
        )
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise ConfigError(f"mosquitto exited at start (port {self.port} taken?): {err}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ConfigError(f"mosquitto did not listen on {self.host}:{self.port} in {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
