"""edgeweave: compress a generative model, weave it across IoT and edge devices, serve it.

The public API is importable from here; each name loads its module on first use, so
``import edgeweave`` stays light (no torch, numpy or onnxruntime until a name needs them)::

    import edgeweave as ew

    dep = ew.embedded("smollm2-135m-instruct", ew.Plan.split(30, [10, 20], variant="int4"))
    print(ew.generate(dep.coordinator.new_session(), dep.tokenizer, "Hello", chat=True).text)

The deep module paths keep working; these names are the ones we keep stable.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> (module, attribute): one table, so `dir(edgeweave)` and the docs agree
_API: dict[str, tuple[str, str]] = {
    # models
    "load": ("edgeweave.models.catalog", "load"),
    "resolve": ("edgeweave.models.catalog", "resolve"),
    "ModelConfig": ("edgeweave.models.config", "ModelConfig"),
    # compression
    "compress": ("edgeweave.compress", ""),  # a callable package: see _callable
    "Recipe": ("edgeweave.compress.recipes", "Recipe"),
    "load_artifact": ("edgeweave.compress.artifact", "load_artifact"),
    "Variant": ("edgeweave.variants", "Variant"),
    # planning
    "place": ("edgeweave.plan.partition", "place"),
    "load_fleet": ("edgeweave.plan.fleet", "load_fleet"),
    "Plan": ("edgeweave.types", "Plan"),
    "Stage": ("edgeweave.types", "Stage"),
    "Shard": ("edgeweave.types", "Shard"),
    "Fleet": ("edgeweave.types", "Fleet"),
    "Policy": ("edgeweave.types", "Policy"),
    # running
    "embedded": ("edgeweave.runtime.launch", "embedded"),
    "attach": ("edgeweave.runtime.launch", "attach"),
    "launch": ("edgeweave.runtime.launch", "launch"),
    "Deployment": ("edgeweave.runtime.deployment", "Deployment"),
    "generate": ("edgeweave.runtime.generate", "generate"),
    "stream_generate": ("edgeweave.runtime.generate", "stream_generate"),
    "SamplingParams": ("edgeweave.runtime.generate", "SamplingParams"),
    "EngineChoice": ("edgeweave.runtime.local", "EngineChoice"),
    "Speculation": ("edgeweave.runtime.drafts", "Speculation"),
    "DraftSpec": ("edgeweave.runtime.drafts", "DraftSpec"),
    "build_draft": ("edgeweave.runtime.drafts", "build_draft"),
    "SpeculativeSession": ("edgeweave.runtime.speculative", "SpeculativeSession"),
    # serving
    "serve": ("edgeweave.serve", ""),  # a callable package: see _callable
    # errors
    "EdgeweaveError": ("edgeweave.errors", "EdgeweaveError"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name == "__version__":  # the installed distribution's, so it never disagrees
        from importlib.metadata import version

        return version("edgeweave")
    try:
        module, attr = _API[name]
    except KeyError:
        raise AttributeError(f"module 'edgeweave' has no attribute {name!r}") from None
    value = importlib.import_module(module)
    value = getattr(value, attr) if attr else value
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

