"""The ``edgeweave`` command: discovers one module per verb in this package.

Each ``edgeweave/cli/<verb>.py`` defines ``register(app)``; adding a verb is adding a file.
User errors (:class:`EdgeweaveError`) print their message, not a traceback, and exit 2.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

from edgeweave.errors import EdgeweaveError

app = typer.Typer(
    name="edgeweave", no_args_is_help=True, add_completion=False,
    help="Weave a generative language model across a fleet of IoT and edge devices.",
    pretty_exceptions_enable=False,
)

_SKIP = {"app", "common"}


def _register_all() -> None:
    import edgeweave.cli as pkg

    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if mod.name in _SKIP or mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"edgeweave.cli.{mod.name}")
        register = getattr(module, "register", None)
        if callable(register):
            register(app)


_register_all()


def main(argv: list[str] | None = None) -> int:
    try:
        app(args=argv, standalone_mode=False)
    except EdgeweaveError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        return 2
    except (typer.Abort, KeyboardInterrupt):
        typer.secho("aborted", err=True)
        return 130
    except Exception as e:  # click usage errors come through here with standalone_mode=False
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return e.exit_code
        if isinstance(e, click.exceptions.Exit):
            return e.exit_code
        raise
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
