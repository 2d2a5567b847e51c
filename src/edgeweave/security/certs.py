"""A certificate authority per fleet: ``edgeweave certs init`` / ``edgeweave certs issue``.

Files (PEM, keys written 0600 and atomically): ``ca.pem`` + ``ca.key`` (keep the key off the
nodes), and ``<name>.pem`` + ``<name>.key`` per node or client. Keys are ECDSA P-256: fast to
make and to handshake on small devices.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from edgeweave.errors import ConfigError
from edgeweave.paths import atomic_write_bytes
from edgeweave.security.tls import FLEET_HOSTNAME, TLSFiles


def _key_pem(key) -> bytes:  # noqa: ANN001 - cryptography key types
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common: str):  # noqa: ANN202
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgeweave"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_ca(folder: str | Path, name: str = "edgeweave fleet CA", days: int = 365) -> Path:
    """Create ``folder/ca.pem`` and ``folder/ca.key``; refuses to overwrite an existing CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = Path(folder)
    if (folder / "ca.key").exists():
        raise ConfigError(f"{folder} already holds a fleet CA: use another folder or "
                          "`edgeweave certs issue` to add certificates")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    atomic_write_bytes(folder / "ca.key", _key_pem(key))
    atomic_write_bytes(folder / "ca.pem", cert.public_bytes(serialization.Encoding.PEM))
    return folder / "ca.pem"


def issue(folder: str | Path, name: str, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
          days: int = 365) -> TLSFiles:
    """Sign a certificate for node or client ``name`` with the fleet CA in ``folder``.

    It is valid for both TLS roles (a node serves stages; a coordinator is a client), and
    names :data:`FLEET_HOSTNAME` plus ``hosts`` (DNS names or IP addresses).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    folder = Path(folder)
    if not name or "/" in name or name in ("ca",):
        raise ConfigError(f"certificate name {name!r} is invalid: use a plain node name")
    if not (folder / "ca.key").is_file():
        raise ConfigError(f"{folder} has no fleet CA: run `edgeweave certs init {folder}` first")
    ca_key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    sans: list[x509.GeneralName] = [x509.DNSName(FLEET_HOSTNAME), x509.DNSName(name)]
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    atomic_write_bytes(folder / f"{name}.key", _key_pem(key))
    atomic_write_bytes(folder / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
    return TLSFiles.from_dir(folder, name)


def init_fleet(folder: str | Path,
               names: tuple[str, ...] = ("coordinator",)) -> dict[str, TLSFiles]:
    """A new CA in ``folder`` plus one certificate per name."""
    make_ca(folder)
    return {n: issue(folder, n) for n in names}
