"""Where compression methods are found: every module under the method subpackages.

A method file registers its recipe type and apply function when imported (a helper such as
``prune/masks.py`` registers nothing). Found by walking the folders, so a new method is one
new file. Its own module, below both ``recipes`` (which asks for it when a manifest names a
method not registered yet) and ``api`` (which loads every method before compressing): the
walk imports the method files by name, so nothing here imports recipes back.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

METHOD_PACKAGES = ("quantize", "prune", "lowrank", "distill")


@functools.cache
def method_modules() -> tuple[str, ...]:
    found = []
    for pkg in METHOD_PACKAGES:
        mod = importlib.import_module(f"edgeweave.compress.{pkg}")
        found += [f"{mod.__name__}.{m.name}" for m in pkgutil.iter_modules(mod.__path__)
                  if not m.name.startswith("_")]
    return tuple(sorted(found))


def load_methods() -> None:
    """Import every method file (they import torch: call only when a method is needed)."""
    for m in method_modules():
        importlib.import_module(m)
