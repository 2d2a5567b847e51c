"""A real mosquitto broker on a free loopback port for the whole module."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from edgeweave.control.broker import Mosquitto

_fleets = itertools.count()


@pytest.fixture(scope="module")
def broker() -> Iterator[Mosquitto]:
    with Mosquitto() as b:
        yield b


@pytest.fixture
def fleet() -> str:
    """A fresh fleet name per test: retained messages of other tests stay out of sight."""
    return f"fleet{next(_fleets)}"
