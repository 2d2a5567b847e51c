"""What a node announces so that a server can plan on it: :class:`Announcement`.

The node publishes it as its retained ``profile`` (``control.messages``): its gRPC address,
the device it is (a catalog ``class``, or the figures the host probe ``measured``), the
variants it runs, its battery and zone, and with TLS its fleet certificate. The server reads
it back with :meth:`Announcement.from_profile` (a malformed one raises :class:`ConfigError`,
which the server logs and ignores) and trusts it only if :func:`verify_certificate` accepts
the certificate: signed by the fleet CA, in its validity period, issued to that device name.
The certificate is public; the gRPC channel's mutual TLS proves the node holds its key.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeweave.errors import ConfigError
from edgeweave.types import DeviceProfile

_MEASURED_KEYS = ("memory", "mem_bw", "compute", "op_overhead_s", "cpus", "source")


@dataclass(frozen=True)
class Announcement:
    """One node's self-description. Exactly one of ``device_class`` (a catalog name) and
    ``measured`` (``memory`` bytes, ``mem_bw`` bytes/s, ``compute`` ops/s per precision,
    ``op_overhead_s``, ``cpus``, ``source``) says what the device can do."""

    device: str
    address: str
    variants: tuple[str, ...] = ("int4",)
    backend: str = ""
    device_class: str | None = None
    measured: dict[str, Any] = field(default_factory=dict, hash=False)
    battery: float | None = None
    zone: str | None = None
    cert_pem: str | None = None
    stages: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        who = f"announcement of {self.device!r}"
        if not self.address or ":" not in self.address:
            raise ConfigError(f"{who}: address {self.address!r} is not host:port")
        if not self.variants or not all(isinstance(v, str) and v for v in self.variants):
            raise ConfigError(f"{who}: needs the variants it runs, e.g. ['int4']")
        if (self.device_class is None) == (not self.measured):
            raise ConfigError(f"{who}: needs a device class (--device-class) or measured "
                              "figures (the host probe), not both or neither")
        if self.battery is not None and not 0 <= self.battery <= 1:
            raise ConfigError(f"{who}: battery must be in [0, 1] (got {self.battery})")
        if self.measured:
            missing = [k for k in ("memory", "mem_bw", "compute") if k not in self.measured]
            if missing:
                raise ConfigError(f"{who}: measured figures miss {', '.join(missing)}")

    @property
    def fingerprint(self) -> str | None:
        """SHA-256 of the certificate (DER), as ``openssl x509 -fingerprint -sha256`` shows."""
        return None if self.cert_pem is None else cert_fingerprint(self.cert_pem)

    def profile(self, extra: dict[str, DeviceProfile] | None = None) -> DeviceProfile:
        """The device profile the planner uses: the catalog class, or one built from the
        measured figures (named ``measured:<device>``)."""
        if self.device_class is not None:
            from edgeweave.profile import catalog

            return catalog.device(self.device_class, extra)
        m = self.measured
        try:
            return DeviceProfile(
                name=f"measured:{self.device}", tier="gateway", memory=int(m["memory"]),
                mem_bw=float(m["mem_bw"]),
                compute={str(k): float(v) for k, v in dict(m["compute"]).items()},
                op_overhead_s=float(m.get("op_overhead_s", 5e-6)),
                description=f"{self.device}, measured by {m.get('source', 'the host probe')}")
        except (TypeError, ValueError) as e:
            raise ConfigError(f"announcement of {self.device!r}: bad measured figures ({e})") \
                from e

    def to_profile(self) -> dict[str, Any]:
        """The ``profile`` payload (JSON-ready; also keeps the older ``stages``/``variant``)."""
        return {"address": self.address, "variants": list(self.variants),
                "variant": self.variants[0], "backend": self.backend,
                "class": self.device_class, "measured": dict(self.measured),
                "battery": self.battery, "zone": self.zone, "cert_pem": self.cert_pem,
                "cert_sha256": self.fingerprint, "stages": list(self.stages)}

    @classmethod
    def from_profile(cls, device: str, p: dict[str, Any]) -> Announcement:
        if not isinstance(p, dict) or not isinstance(p.get("address"), str):
            raise ConfigError(f"announcement of {device!r} has no gRPC address: the node is "
                              "not an `edgeweave node --mqtt` of this version")
        variants = p.get("variants") or ([p["variant"]] if p.get("variant") else [])
        measured = p.get("measured") or {}
        if not isinstance(measured, dict) or not isinstance(variants, list):
            raise ConfigError(f"announcement of {device!r}: measured must be an object and "
                              "variants a list")
        battery = p.get("battery")
        try:
            return cls(device=device, address=p["address"], variants=tuple(variants),
                       backend=str(p.get("backend") or ""), device_class=p.get("class") or None,
                       measured={k: measured[k] for k in _MEASURED_KEYS if k in measured},
                       battery=None if battery is None else float(battery),
                       zone=None if p.get("zone") is None else str(p["zone"]),
                       cert_pem=p.get("cert_pem") or None,
                       stages=tuple(str(s) for s in p.get("stages") or ()))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"announcement of {device!r} is malformed ({e})") from e


def cert_fingerprint(pem: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def verify_certificate(pem: str | None, ca_pem: bytes, device: str) -> str | None:
    """None when ``pem`` is a certificate the fleet CA signed for ``device`` and valid now;
    otherwise the reason it is not (what the server logs when it ignores the node)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    if not pem:
        return "it announced no certificate (start it with --tls-dir)"
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as e:
        return f"its certificate does not parse ({e})"
    try:
        cert.verify_directly_issued_by(ca)
    except Exception as e:  # noqa: BLE001 - InvalidSignature, or a key type mismatch
        return f"its certificate is not signed by the fleet CA ({type(e).__name__})"
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        return f"its certificate is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d}" \
               f" to {cert.not_valid_after_utc:%Y-%m-%d})"
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if device not in names:
        return f"its certificate was issued to {names[0] if names else '?'!r}, not {device!r}"
    return None


def quick_probe() -> dict[str, Any]:
    """This host measured in about a second, without torch (an ONNX node never imports it):
    usable memory, the fp32 matrix-vector bandwidth decode reads weights at, and an fp32
    matrix-multiply rate. The cached ``edgeweave profile`` result is used instead when it
    exists (:func:`measured_figures`)."""
    import os

    import numpy as np
    import psutil

    from edgeweave.profile import microbench as mb

    gemv = mb.gemv_bandwidth(n_mats=16)
    a = np.random.default_rng(0).standard_normal((384, 384), dtype=np.float32)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return {"memory": int(psutil.virtual_memory().available), "mem_bw": gemv,
            "compute": {"fp32": 2 * 384 ** 3 / best}, "op_overhead_s": 5e-6,
            "cpus": os.cpu_count() or 1, "source": "quick probe (numpy)"}


def measured_figures() -> dict[str, Any]:
    """The host probe's figures: ``edgeweave profile``'s cache, or a quick probe now."""
    from edgeweave.profile import probe

    hp = probe.load_cached()
    if hp is None:
        return quick_probe()
    d = hp.device()
    return {"memory": d.memory, "mem_bw": min(hp.gemv_bw, d.mem_bw), "compute": d.compute,
            "op_overhead_s": d.op_overhead_s, "cpus": hp.cpus,
            "source": f"edgeweave profile ({time.strftime('%Y-%m-%d', time.gmtime(hp.probed_at))})"}


def read_cert(tls: Any) -> str | None:
    """The PEM of a node's own certificate (``TLSFiles``), or None without TLS."""
    return None if tls is None else Path(tls.cert).read_text()

