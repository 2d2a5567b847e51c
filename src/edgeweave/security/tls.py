"""Mutual-TLS credentials for the gRPC stage channels.

Trust is the fleet CA, not host names: every node certificate carries the DNS name
:data:`FLEET_HOSTNAME` and clients verify against it (``ssl_target_name_override``), so a
node is accepted wherever it runs *iff* our CA signed it; a node refuses any client whose
certificate another CA signed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeweave.errors import ConfigError

FLEET_HOSTNAME = "edgeweave-node"


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of one party: the fleet CA certificate plus its own certificate and key."""

    ca: Path
    cert: Path
    key: Path

    def __post_init__(self) -> None:
        for label, p in (("CA certificate", self.ca), ("certificate", self.cert),
                         ("private key", self.key)):
            if not Path(p).is_file():
                raise ConfigError(f"TLS {label} {p} does not exist: create the fleet's "
                                  "certificates with `edgeweave certs init DIR`")

    @classmethod
    def from_dir(cls, folder: str | Path, name: str) -> TLSFiles:
        """``folder/ca.pem`` + ``folder/<name>.pem`` + ``folder/<name>.key`` (as written by
        ``edgeweave certs``)."""
        folder = Path(folder)
        return cls(folder / "ca.pem", folder / f"{name}.pem", folder / f"{name}.key")

    def _read(self) -> tuple[bytes, bytes, bytes]:
        return self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()

    def server_credentials(self) -> Any:
        import grpc

        ca, cert, key = self._read()
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                           require_client_auth=True)

    def channel_credentials(self) -> Any:
        import grpc

        ca, cert, key = self._read()
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                            certificate_chain=cert)

    @staticmethod
    def channel_options() -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", FLEET_HOSTNAME)]
