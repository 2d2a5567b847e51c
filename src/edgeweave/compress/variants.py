"""Named, cached variants of a model: ``variant("int4")`` builds once, then reuses.

The demo and the planner ask for variants by name; the artifact lives under
``$EDGEWEAVE_HOME/artifacts/<model>/<name>`` and is rebuilt when its manifest's recipe no
longer matches the variant's or when it fails hash verification. (A changed source model with
the same name is not detected: delete the folder after replacing a model.) The check and the
build run under the entry's lock (``paths.build_once``), so processes asking for the same
variant at once compress it once; a killed build's leftover is removed by the next one.
"""

from __future__ import annotations

from pathlib import Path

from edgeweave.compress.recipes import GPTQ, RTN, Recipe, SmoothQuant
from edgeweave.errors import ArtifactError, ConfigError
from edgeweave.paths import build_once, home

VARIANTS: dict[str, Recipe] = {
    "int8": RTN(bits=8),
    "int4": GPTQ(bits=4, group_size=128, pad=True),
    "int4-rtn": RTN(bits=4, group_size=128, pad=True),
    # Symmetric grid (every zero is 0): MatMulNBits reads it as it is, without the extra
    # group-sum product an asymmetric zero costs the ONNX graph (26 % of kernel time at g128)
    "int4-sym": GPTQ(bits=4, group_size=32, symmetric=True, pad=True),
    "w8a8-smooth": SmoothQuant(),
}


def variant_path(name: str, model: str = "smollm2-135m-instruct") -> Path:
    return home() / "artifacts" / model / name


def _usable(path: Path, recipe: Recipe) -> bool:
    """The artifact at ``path`` is whole (hashes match) and was built with ``recipe``."""
    from edgeweave.compress.artifact import read_manifest, verify

    if not path.exists():
        return False
    try:
        return verify(path, read_manifest(path))["recipe"] == recipe.to_dict()
    except ArtifactError:
        return False  # damaged or stale: rebuild


def variant(name: str, model: str = "smollm2-135m-instruct") -> Path:
    """Path of the artifact for variant ``name`` of ``model``, compressing it if needed."""
    if name not in VARIANTS:
        raise ConfigError(f"unknown variant {name!r}: choose one of {', '.join(VARIANTS)}")
    from edgeweave.compress.api import compress
    from edgeweave.models import load

    recipe = VARIANTS[name]
    path = variant_path(name, model)
    build_once(path, lambda p: _usable(p, recipe), lambda out: compress(load(model), recipe, out=out))
    return path
