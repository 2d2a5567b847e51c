"""Compression: recipes -> packed models -> verified artifacts.

``compress(model, recipe) -> Artifact``; ``load_artifact(path, shard) -> LoadedModel``;
``variant(name)`` builds or reuses a cached named artifact ("int8", "int4", ...).

Names resolve lazily (PEP 562), so ``edgeweave.compress.recipes`` (pure dataclasses) and the
manifest readers can be used by a process that never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Context": "api", "compress": "api",
    "Artifact": "artifact", "load_artifact": "artifact", "read_manifest": "artifact",
    "verify": "artifact",
    "Calibration": "calib", "wiki_calibration": "calib",
    **{n: "recipes" for n in ("ASVD", "GPTQ", "PRESETS", "RTN", "SVD", "ChannelPrune",
                              "Distill", "Magnitude", "Pipeline", "Recipe", "SmoothQuant",
                              "SparseGPT", "Wanda")},
    "parse_recipe": "spec", "presets": "spec",
    "VARIANTS": "variants", "variant": "variants",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"edgeweave.compress.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


from edgeweave._callable import make_callable  # noqa: E402 - after the module's own names

make_callable(__name__, "edgeweave.compress.api:compress")  # ew.compress(model, recipe)
