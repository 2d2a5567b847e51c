"""Helpers shared by the tests: the CLI's one-line error contract, a hypothesis strategy that
mutates a valid document (wrong types, unknown keys, deleted entries), and a module file
dropped into a package folder (how the registry tests add a member as a newcomer would)."""

from __future__ import annotations

import contextlib
import copy
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import strategies as st

from edgeweave.cli.app import main


def cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI, expect exit 2 and exactly one `error: ...` line on stderr."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _slots(doc: object, out: list) -> list:
    """Every (container, key) of a document, to mutate one of them."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in list(items):
        out.append((doc, k))
        _slots(v, out)
    return out


def mutations(values: st.SearchStrategy) -> st.SearchStrategy:
    """``mutations(values)(base)``: ``base`` with 1-3 slots swapped to a value of another type
    (drawn from ``values``), given an unknown key, or deleted."""

    @st.composite
    def mutate(draw: st.DrawFn, base: object) -> object:
        doc = copy.deepcopy(base)
        for _ in range(draw(st.integers(1, 3))):
            slots = _slots(doc, [])
            if not slots:
                break
            container, key = draw(st.sampled_from(slots))
            op = draw(st.sampled_from(["swap", "unknown-key", "delete"]))
            if op == "swap":  # a value of another type (or shape) in the same place
                old = container[key]
                container[key] = draw(values.filter(lambda v, old=old: type(v) is not type(old)))
            elif op == "unknown-key" and isinstance(container, dict):
                container[draw(st.text(min_size=1, max_size=8))] = draw(values)
            else:
                del container[key]
        return doc

    return mutate


@contextlib.contextmanager
def module_in_package(package: ModuleType, folder: Path, name: str, source: str
                      ) -> Iterator[str]:
    """Write ``source`` as ``folder/name.py`` and make it a module of ``package`` (as if the
    file were in the package's folder) while the block runs; yields its full module name.
    The caller undoes what importing it registered."""
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    package.__path__.append(str(folder))
    full = f"{package.__name__}.{name}"
    try:
        yield full
    finally:
        package.__path__.remove(str(folder))
        sys.modules.pop(full, None)


def embedded_tokens(model: str | Path, prompt: str, params: object) -> list[int]:
    """Greedy tokens of the single-process reference (torch fp32, one thread): what every
    distributed test must reproduce."""
    from edgeweave.runtime.generate import generate
    from edgeweave.runtime.local import EngineChoice
    from edgeweave.serve.backend import LocalSessions

    local = LocalSessions.load(str(model), EngineChoice("torch", "fp32", 1))
    try:
        return generate(local.new_session(), local.tokenizer, prompt, params).token_ids
    finally:
        local.close()
