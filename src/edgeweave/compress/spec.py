"""A recipe as a user gives it: a name, JSON text, a dict, a ``.json`` file or a Recipe.

The names are the serving variants' recipes (the one variant registry,
:mod:`edgeweave.variants`) and then the experiment presets (``recipes.PRESETS``). This sits
above both: variants are built from recipes, so recipes cannot look names up in variants.
Pure Python, like recipes: reading a spec imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeweave.compress.recipes import PRESETS, Recipe, from_dict, from_json
from edgeweave.errors import ConfigError
from edgeweave.validate import kind, show, suggest
from edgeweave.variants import registry


def presets() -> dict[str, Recipe]:
    """Every recipe name: the serving variants' recipes, then the experiment presets."""
    return {**{n: v.recipe for n, v in registry().items() if v.recipe is not None}, **PRESETS}


def parse_recipe(spec: str | Recipe | dict[str, Any]) -> Recipe:
    """A preset name, a JSON recipe (text, dict, or a ``.json`` file), or a recipe object."""
    if isinstance(spec, Recipe):
        return spec
    if isinstance(spec, dict):
        return from_dict(spec)
    if not isinstance(spec, str):
        raise ConfigError(f"a recipe is a preset name, JSON text or a Recipe, got {kind(spec)} "
                          f"{show(spec)}")
    named = presets()
    if spec in named:
        return named[spec]
    if spec.lstrip().startswith("{"):
        return from_json(spec)
    if spec.endswith(".json") or _is_file(spec):
        text = _read_recipe_file(Path(spec))
        try:
            return from_json(text)
        except ConfigError as e:
            raise ConfigError(f"recipe file {show(spec, 400)}: {e}") from e
    raise ConfigError(f"unknown recipe {show(spec)}{suggest(spec, named)}: choose a preset "
                      f"({', '.join(sorted(named))}), a .json file or JSON like "
                      "'{\"method\": \"rtn\", \"params\": {\"bits\": 4}}'")


def _is_file(spec: str) -> bool:
    try:
        return Path(spec).is_file()
    except (OSError, ValueError):  # a name too long for a path, a NUL byte: not a file
        return False


def _read_recipe_file(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, ValueError) as e:
        if isinstance(e, UnicodeDecodeError):
            raise ConfigError(f"recipe file {path} is not text (byte at offset {e.start} is "
                              "not UTF-8): pass a JSON recipe file") from e
        raise ConfigError(f"cannot read recipe file {show(str(path), 400)}: "
                          f"{getattr(e, 'strerror', None) or e}; pass a preset name or an "
                          "existing .json file") from e
