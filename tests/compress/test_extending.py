"""A new compression method is one file: its recipe type and apply function side by side."""

from __future__ import annotations

import pytest
import torch

import edgeweave.compress.prune as prune_pkg
from edgeweave.compress import api
from edgeweave.compress.recipes import METHODS, RECIPES
from edgeweave.compress.spec import parse_recipe
from tests.helpers import module_in_package

METHOD_FILE = '''
"""Halve every block linear: a method that fits in one file (docs/extending.md)."""
from dataclasses import dataclass
from typing import ClassVar

from edgeweave.compress.calib import block_linears
from edgeweave.compress.recipes import Recipe, recipe_type, register_method


@recipe_type
@dataclass(frozen=True)
class Halve(Recipe):
    method: ClassVar[str] = "halve-test"
    factor: float = 0.5


@register_method(Halve)
def apply_halve(r, model, ctx, note):
    for _, m in block_linears(model):
        m.weight.mul_(r.factor)
    note["scope"] = "block linears"
    return model
'''


@pytest.fixture
def method_file(tmp_path):
    with module_in_package(prune_pkg, tmp_path, "halve_test", METHOD_FILE) as name:
        api.method_modules.cache_clear()
        try:
            yield name
        finally:
            for t in [t for t in METHODS if t.method == "halve-test"]:
                del METHODS[t]
            RECIPES.pop("halve-test", None)
    api.method_modules.cache_clear()  # after the folder left the package path


def test_a_method_file_is_found_by_its_folder_and_runs(method_file, tiny_lm, tmp_path):
    assert method_file in api.method_modules()
    recipe = parse_recipe({"method": "halve-test", "params": {"factor": 0.25}})
    assert type(recipe).__name__ == "Halve" and recipe.factor == 0.25
    art = api.compress(tiny_lm, recipe, out=tmp_path / "art")
    before = dict(tiny_lm.model.named_parameters())["layers.0.mlp.down_proj.weight"]
    after = dict(art.model.named_parameters())["layers.0.mlp.down_proj.weight"]
    assert torch.allclose(after, before * 0.25, atol=1e-3)


def test_every_method_module_is_discovered_without_a_list():
    names = api.method_modules()
    for m in ("quantize.rtn", "quantize.gptq", "prune.wanda", "lowrank.svd", "distill.kd"):
        assert f"edgeweave.compress.{m}" in names
