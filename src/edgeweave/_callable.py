"""Packages that are also the function they are named after (``edgeweave.compress(...)``).

``edgeweave.compress`` and ``edgeweave.serve`` are both a subpackage and a top-level API
function. Python binds a subpackage to its parent's attribute when it is first imported, so
a plain function of that name in ``edgeweave/__init__`` would be replaced by the package
as soon as anything imports ``edgeweave.compress.recipes``. Making the package object
callable keeps ``ew.compress(model, "int4")`` working whatever was imported before.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class CallablePackage(types.ModuleType):
    """A package whose call is its ``__call_target__`` ("module:attr"), imported on first call."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__call_target__()(*args, **kwargs)

    def __call_target__(self) -> Any:
        module, attr = self.__dict__["_call_target"].split(":")
        return getattr(importlib.import_module(module), attr)


def make_callable(package: str, target: str) -> None:
    """Turn the already-imported ``package`` into a :class:`CallablePackage` calling ``target``."""
    mod = sys.modules[package]
    mod._call_target = target  # type: ignore[attr-defined]
    mod.__class__ = CallablePackage
