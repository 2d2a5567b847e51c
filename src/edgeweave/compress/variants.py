"""Built, cached variants of a model: ``variant("int4")`` compresses once, then reuses.

The recipe comes from the one variant registry (:mod:`edgeweave.variants`); the artifact lives
under ``$EDGEWEAVE_HOME/artifacts/<model>/<name>`` and is rebuilt when its manifest's recipe
(or that recipe's version) no longer matches the variant's, or when it fails hash
verification. (A changed source model with the same name is not detected: delete the folder
after replacing a model.) The check and the build run under the entry's lock
(``paths.build_once``), so processes asking for the same variant at once compress it once; a
killed build's leftover is removed by the next one. Checking a built artifact needs no
torch (:func:`built_variant`), so a process that only runs ONNX stages stays small.
"""

from __future__ import annotations

from pathlib import Path

from edgeweave.errors import ArtifactError, ConfigError
from edgeweave.models.catalog import DEFAULT_MODEL
from edgeweave.paths import build_once, home
from edgeweave.variants import Variant, get, registry

# name -> recipe, for callers of the first API; the registry is the source of truth
VARIANTS = {n: v.recipe for n, v in registry().items() if v.recipe is not None}


def variant_path(name: str, model: str = DEFAULT_MODEL) -> Path:
    # a model given as a path keys its artifacts by folder name, inside $EDGEWEAVE_HOME
    return home() / "artifacts" / Path(model).name / name


def usable(path: Path, v: Variant) -> bool:
    """The artifact at ``path`` is whole (hashes match) and was built with ``v``'s recipe."""
    from edgeweave.compress.manifest import read_manifest, verify
    from edgeweave.compress.recipes import from_dict

    if not path.exists() or v.recipe is None:
        return False
    try:
        have = verify(path, read_manifest(path))["recipe"]
        return have.get("version") == v.recipe.version and from_dict(have) == v.recipe
    except (ArtifactError, ConfigError):
        return False  # damaged or stale: rebuild


def built_variant(name: str | Variant, model: str = DEFAULT_MODEL) -> Path | None:
    """The artifact of an already built variant, or None (no torch is imported)."""
    v = get(name)
    path = variant_path(v.name, model)
    return path if usable(path, v) else None


def variant(name: str | Variant, model: str = DEFAULT_MODEL) -> Path:
    """Path of the artifact for variant ``name`` of ``model``, compressing it if needed."""
    v = get(name)
    if v.recipe is None:
        raise ConfigError(f"variant {v.name!r} is the model itself (or planner-only): no "
                          "artifact to build; use the model directly")
    path = variant_path(v.name, model)

    def build(out: Path) -> None:
        from edgeweave.compress.api import compress
        from edgeweave.models import load

        compress(load(model), v.recipe, out=out)

    build_once(path, lambda p: usable(p, v), build)
    return path
