"""A variant is a typed value from one registry, written into and read back from manifests;
nothing derives behaviour from a variant's name."""

from __future__ import annotations

import json

import pytest

from edgeweave.compress import compress
from edgeweave.compress.recipes import GPTQ, RTN, SmoothQuant, Wanda
from edgeweave.compress.spec import parse_recipe
from edgeweave.errors import ConfigError
from edgeweave.runtime.engines.onnx_build import export_spec
from edgeweave.types import Shard, WeightFormat
from edgeweave.variants import Variant, from_manifest, get, planner_defaults, registry


def test_one_registry_feeds_the_compressor_the_planner_and_the_recipes():
    reg = registry()
    assert {"fp32", "int8", "int4", "int4-fast", "int4-sym", "w8a8-smooth"} <= set(reg)
    assert parse_recipe("int4") == reg["int4"].recipe  # one meaning of "int4"
    assert set(planner_defaults()) == {"fp32", "fp16", "int8", "int4"}
    for v in reg.values():
        if v.recipe is not None:
            assert v.format == v.recipe.weight_format()
            assert v.precision == v.format.precision
    with pytest.raises(ConfigError, match="unknown variant"):
        get("q4_k_m")


@pytest.mark.parametrize("recipe,want", [
    (RTN(bits=8), WeightFormat(8)),
    (RTN(bits=4, group_size=32), WeightFormat(4, 32, "float")),
    (RTN(bits=4, group_size=64, zero_point="int"), WeightFormat(4, 64, "int")),
    (GPTQ(bits=4, group_size=32, symmetric=True), WeightFormat(4, 32, "none")),
    (GPTQ(bits=3, group_size=64, zero_point="int"), WeightFormat(4, 64, "int", grid_bits=3)),
    (SmoothQuant(), WeightFormat(8, activations="int8")),
    (Wanda(0.5), WeightFormat(16)),
])
def test_recipes_say_their_weight_format(recipe, want):
    assert recipe.weight_format() == want


def test_the_manifest_round_trips_the_variant(tiny_lm, calib, tmp_path):
    art = compress(tiny_lm, RTN(bits=4, group_size=32, zero_point="int"), out=tmp_path / "mine")
    m = json.loads((art.path / "manifest.json").read_text())
    assert m["weights"] == {"bits": 4, "group_size": 32, "zero_point": "int",
                            "activations": "float", "grid_bits": 0}
    v = from_manifest(art.path)
    assert isinstance(v, Variant) and v.name == "mine" and v.source.endswith("manifest.json")
    assert v.format == WeightFormat(4, 32, "int") and v.precision == "int4"
    assert v.recipe == RTN(bits=4, group_size=32, zero_point="int")
    assert v.bits_per_weight == pytest.approx(m["stats"]["bits_per_weight"])
    # the exporter reads the format, not the name: a hand-named artifact exports as int4
    spec = export_spec(v, Shard(0, 4, 4), 256)
    assert (spec.weights, spec.group_size, spec.symmetric) == ("int4", 32, False)


def test_an_older_manifest_without_weights_derives_them_from_its_recipe(tiny_lm, calib,
                                                                         tmp_path):
    art = compress(tiny_lm, SmoothQuant(), calib=calib, out=tmp_path / "w8a8-smooth")
    mf = art.path / "manifest.json"
    m = json.loads(mf.read_text())
    del m["weights"]
    mf.write_text(json.dumps(m))
    v = from_manifest(art.path)
    assert v.format == WeightFormat(8, activations="int8")
    # once parsed from the name ("w8a8" split on "-"), this variant was refused by ONNX
    assert export_spec(v, Shard(0, 4, 4), 256).weights == "int8"


def test_cached_variants_rebuild_when_the_recipe_changes(tiny_folder, tmp_home):
    from edgeweave.compress.variants import built_variant, usable, variant, variant_path

    assert built_variant("int8", str(tiny_folder)) is None
    path = variant("int8", str(tiny_folder))
    assert built_variant("int8", str(tiny_folder)) == path == variant_path("int8", str(tiny_folder))
    stale = Variant("int8", 8.0, "int8", 1.0, recipe=RTN(bits=4, group_size=32))
    assert not usable(path, stale)  # another recipe: compress.variant would rebuild it
    m = json.loads((path / "manifest.json").read_text())
    m["recipe"]["version"] = 0  # an older version of the same recipe
    (path / "manifest.json").write_text(json.dumps(m))
    assert not usable(path, get("int8"))


@pytest.mark.parametrize("method", [RTN, GPTQ])
def test_a_mixed_recipe_round_trips_and_quantizes_what_it_names(tiny_lm, calib, tmp_path,
                                                                method):
    from edgeweave.compress.modules import Int4Linear, Int8Linear, QuantEmbedding

    recipe = method(bits=4, group_size=32, int_zero=("o_proj", "down_proj"), embedding_bits=8)
    art = compress(tiny_lm, recipe, calib=calib, out=tmp_path / "mixed")
    assert from_manifest(art.path).recipe == recipe  # the names come back as a tuple
    kinds = {name.rsplit(".", 1)[-1]: m.zero_point for name, m in art.model.named_modules()
             if isinstance(m, Int4Linear)}
    assert kinds == {"q_proj": "float", "k_proj": "float", "v_proj": "float", "o_proj": "int",
                     "gate_proj": "float", "up_proj": "float", "down_proj": "int"}
    assert isinstance(art.model.embed_tokens, QuantEmbedding)
    assert art.model.embed_tokens.bits == 8 and isinstance(art.model.lm_head, Int8Linear)
    with pytest.raises(ConfigError, match=r"int_zero names \['o_prj'\].*choose among"):
        compress(tiny_lm, method(bits=4, group_size=32, int_zero=("o_prj",)), calib=calib)
