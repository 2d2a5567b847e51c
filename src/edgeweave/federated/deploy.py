"""Deployment mode: a Flower SuperLink and SuperNodes as separate processes on loopback,
with TLS (a throw-away CA signs the SuperLink's certificate) and SuperNode authentication
(each node has an EC key; only keys registered with ``flwr supernode register`` may join).

The equivalent commands, for a by-hand deployment (``FLWR_HOME`` holds ``config.toml``
naming the SuperLink address and CA):

    flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile server.pem \\
        --ssl-keyfile server.key --enable-supernode-auth \\
        --disable-runtime-dependency-installation --host 127.0.0.1 --port 9093
    flwr supernode register node0.pub edgeweave
    flower-supernode --root-certificates ca.crt --superlink 127.0.0.1:9093 \\
        --auth-supernode-private-key node0 --host 127.0.0.1 --port 9094 \\
        --node-config 'partition-id=0 memory-mb=512'
    flwr run <app folder> edgeweave --stream

:class:`Deployment` does all of that, writes the Flower app folder (``pyproject.toml`` +
a two-line module pointing at :mod:`edgeweave.federated`), and stops every process it
started, including the SuperLink, on exit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeweave.errors import RuntimeStageError
from edgeweave.federated.config import FedConfig

APP_MODULE = "edgeweave_fl_app"
APP_CODE = '''"""Flower app entry points: the real code lives in edgeweave.federated."""
import json
import os

from edgeweave.federated.client import local_dp, make_client_app
from edgeweave.federated.run import make_server_app

_dp = json.loads(os.environ.get("EDGEWEAVE_FL_DP", "null"))
# client-side DP: Flower's LocalDpMod (clip, epsilon, delta) on train messages
client = make_client_app([local_dp(*_dp)] if _dp else [])
server = make_server_app()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tls(folder: Path) -> dict[str, Path]:
    """A CA and a SuperLink certificate for 127.0.0.1/localhost (ECDSA P-256, 1 day)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgeweave-fl-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                       x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(san, critical=False).sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    paths = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(pem))
    paths["cert"].write_bytes(cert.public_bytes(pem))
    paths["key"].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    os.chmod(paths["key"], 0o600)
    return paths


def make_node_key(folder: Path, name: str) -> tuple[Path, Path]:
    """An EC P-384 key pair in OpenSSH format (what Flower's node auth reads)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    priv, pub = folder / name, folder / f"{name}.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    os.chmod(priv, 0o600)
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                  serialization.PublicFormat.OpenSSH))
    return priv, pub


def write_app(folder: Path, cfg: FedConfig, extra: dict[str, Any]) -> Path:
    import tomli_w

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{APP_MODULE}.py").write_text(APP_CODE)
    project = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": "edgeweave-fl", "version": "0.1.0", "dependencies": []},
        "tool": {"hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
                 "flwr": {"app": {"publisher": "edgeweave",
                                  "components": {"serverapp": f"{APP_MODULE}:server",
                                                 "clientapp": f"{APP_MODULE}:client"},
                                  "config": {**cfg.to_run_config(), **extra}}}},
    }
    (folder / "pyproject.toml").write_text(tomli_w.dumps(project))
    return folder


@dataclass
class Deployment:
    """SuperLink + SuperNodes on 127.0.0.1 with TLS and node authentication.

    Use as a context manager; ``nodes`` maps a name to its node config; names listed in
    ``unregistered`` get a key that is *not* registered (the SuperLink must refuse them).
    """

    workdir: Path
    cfg: FedConfig
    nodes: dict[str, dict[str, Any]]
    unregistered: tuple[str, ...] = ()
    env_extra: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    port: int = 0

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"FLWR_HOME": str(self.workdir / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0",
                    "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
                    "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **self.env_extra})
        # SuperLink/SuperNode spawn flower-superexec, flwr-serverapp, flwr-clientapp by name.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        if self.cfg.dp_clip > 0:
            env["EDGEWEAVE_FL_DP"] = json.dumps([self.cfg.dp_clip, self.cfg.dp_epsilon,
                                                 self.cfg.dp_delta])
        return env

    def _bin(self, name: str) -> str:
        return str(Path(sys.executable).parent / name)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - lives with the process
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                             cwd=self.workdir, start_new_session=True)
        self.procs[name] = p
        return p

    def log(self, name: str) -> str:
        f = self.workdir / f"{name}.log"
        return f.read_text(errors="replace") if f.is_file() else ""

    def _flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([self._bin("flwr"), *args], env=self.env(), cwd=self.workdir,
                              capture_output=True, text=True, timeout=timeout)

    def __enter__(self) -> Deployment:
        self.workdir.mkdir(parents=True, exist_ok=True)
        home = self.workdir / "flwr-home"
        home.mkdir(exist_ok=True)
        tls = make_tls(self.workdir / "tls")
        self.port = free_port()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "edgeweave"\n\n[superlink.edgeweave]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{tls["ca"]}"\n')
        try:
            self._spawn("superlink", [
                self._bin("flower-superlink"), "--ssl-ca-certfile", str(tls["ca"]),
                "--ssl-certfile", str(tls["cert"]), "--ssl-keyfile", str(tls["key"]),
                "--enable-supernode-auth", "--disable-runtime-dependency-installation",
                "--host", "127.0.0.1", "--port", str(self.port)])
            self._wait_port(self.port, "superlink")
            keys = self.workdir / "keys"
            keys.mkdir(exist_ok=True)
            for name, node_cfg in self.nodes.items():
                priv, pub = make_node_key(keys, name)
                if name not in self.unregistered:
                    r = self._flwr("supernode", "register", str(pub), "edgeweave")
                    if r.returncode != 0:
                        raise RuntimeStageError(f"registering {name} failed: {r.stdout}{r.stderr}")
                conf = " ".join(f"{k}={json.dumps(v)}" for k, v in node_cfg.items())
                self._spawn(name, [
                    self._bin("flower-supernode"), "--root-certificates", str(tls["ca"]),
                    "--superlink", f"127.0.0.1:{self.port}", "--auth-supernode-private-key",
                    str(priv), "--host", "127.0.0.1", "--port", str(free_port()),
                    "--node-config", conf, "--max-retries", "3", "--max-wait-time", "20"])
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_port(self, port: int, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                raise RuntimeStageError(f"{name} exited: {self.log(name)[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise RuntimeStageError(f"{name} did not listen on {port} in {timeout} s")

    def run(self, out: Path, timeout: float = 300, evaluate: bool = False,
            adapter_out: Path | None = None) -> dict[str, Any]:
        """Submit the app (``flwr run``), wait for it and return the ServerApp's results
        (and the final global adapter written to ``adapter_out``, when given)."""
        extra: dict[str, Any] = {"out": str(out), "evaluate": evaluate}
        if adapter_out is not None:
            extra["adapter_out"] = str(Path(adapter_out).resolve())
        app = write_app(self.workdir / "app", self.cfg, extra)
        r = self._flwr("run", str(app), "edgeweave", "--stream", timeout=timeout)
        if not out.is_file():
            raise RuntimeStageError(f"the run wrote no results; flwr run said:\n{r.stdout[-3000:]}"
                                    f"\n{r.stderr[-2000:]}\nsuperlink log:\n"
                                    f"{self.log('superlink')[-3000:]}")
        return json.loads(out.read_text())

    def stop(self) -> None:
        """Stop every process started here and their descendants (the SuperLink detaches
        its SuperExec into a new session, so process groups alone would miss it)."""
        import psutil

        victims: dict[int, psutil.Process] = {}
        for p in self.procs.values():
            try:
                root = psutil.Process(p.pid)
                for c in [root, *root.children(recursive=True)]:
                    victims[c.pid] = c
            except psutil.NoSuchProcess:
                continue
        for v in victims.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                v.terminate()
        _, alive = psutil.wait_procs(list(victims.values()), timeout=10)
        for v in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                v.kill()
        psutil.wait_procs(alive, timeout=5)
        for p in self.procs.values():
            if p.poll() is None:
                p.wait(timeout=5)

    def __exit__(self, *exc: object) -> None:
        self.stop()
