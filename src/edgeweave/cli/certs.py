"""``edgeweave certs``: a certificate authority for a fleet and its node certificates."""

from __future__ import annotations

import typer

from edgeweave.cli.common import console


def register(app: typer.Typer) -> None:
    certs = typer.Typer(help="Fleet CA and node/client certificates for mutual TLS.",
                        no_args_is_help=True)
    app.add_typer(certs, name="certs")

    @certs.command("init")
    def init_cmd(
        folder: str = typer.Argument(..., help="Where to write ca.pem/ca.key and certificates."),
        names: list[str] = typer.Argument(None, help="Node/client names to issue now "  # noqa: B008
                                          "(default: coordinator)."),
    ) -> None:
        """Create a new fleet CA and certificates for NAMES."""
        from edgeweave.security.certs import init_fleet

        issued = init_fleet(folder, tuple(names or ("coordinator",)))
        console.print(f"fleet CA in {folder}/ca.pem; issued: {', '.join(issued)}")

    @certs.command("issue")
    def issue_cmd(
        folder: str = typer.Argument(..., help="Folder holding the fleet CA."),
        name: str = typer.Argument(..., help="Node or client name."),
        host: list[str] = typer.Option([], "--host",  # noqa: B008
                                       help="Extra DNS name or IP (repeatable)."),
    ) -> None:
        """Sign a certificate for one more node or client."""
        from edgeweave.security.certs import issue

        files = issue(folder, name, ("localhost", "127.0.0.1", *host))
        console.print(f"issued {files.cert} and {files.key}")
