"""``python -m edgeweave``: the same CLI as the ``edgeweave`` script."""

from edgeweave.cli.app import entry

entry()
