"""Model catalog, loaders and the block-level Llama-family implementation.

Names are resolved lazily (PEP 562): ``from edgeweave.models import resolve`` must not import
torch, because a process that only runs ONNX stages never needs it (about 245 MB of RSS).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "KVCache": "edgeweave.models.cache",
    "DEFAULT_MODEL": "edgeweave.models.catalog",
    "available": "edgeweave.models.catalog",
    "load": "edgeweave.models.catalog",
    "resolve": "edgeweave.models.catalog",
    "LoadedModel": "edgeweave.models.checkpoint",
    "load_folder": "edgeweave.models.checkpoint",
    "ModelConfig": "edgeweave.models.config",
    "BlockModel": "edgeweave.models.llama",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
