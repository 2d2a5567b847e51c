"""Bad recipes (JSON, dicts, files): a ConfigError that names the field and the fix."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeweave.cli.app import main
from edgeweave.compress.recipes import (
    GPTQ,
    PRESETS,
    RECIPES,
    RTN,
    Pipeline,
    SmoothQuant,
    Wanda,
    from_dict,
)
from edgeweave.compress.spec import parse_recipe
from edgeweave.errors import ConfigError, EdgeweaveError
from tests.helpers import mutations as shared_mutations


@pytest.mark.parametrize("doc,needles", [
    ({"method": "wanda", "params": {"sparsity": "0.5"}},
     ["sparsity must be a finite number", "a string '0.5'", '"sparsity": 0.5']),
    ({"method": "rtn", "params": {"bits": "4"}}, ["bits must be an integer", '"bits": 4']),
    ({"method": "rtn", "params": {"bits": 4.0}}, ["bits must be an integer"]),
    ({"method": "rtn", "params": {"bits": True}}, ["bits must be an integer", "a boolean"]),
    ({"method": "rtn", "params": {"pad": 1}}, ["pad must be true or false"]),
    ({"method": "rtn", "params": {"group_size": "64"}},
     ["group_size must be an integer or null"]),
    ({"method": "distill", "params": {"loss": 3}}, ["loss must be a string"]),
    ({"method": "gptq", "params": {"damp": math.nan}}, ["damp must be a finite number"]),
    ({"method": "distill", "params": {"lr": math.inf}}, ["lr must be a finite number"]),
    ({"method": "rtn", "version": "2"}, ["version must be an integer >= 1", "a string '2'"]),
    ({"method": "rtn", "version": 0}, ["version must be an integer >= 1"]),
    ({"method": "rtn", "params": 5}, ["params must be a JSON object", "an integer 5"]),
    ({"method": "rtn", "params": [4]}, ["params must be a JSON object", "a list"]),
    ({"method": "pipeline", "params": {"steps": 5}}, ["params.steps must be a non-empty list"]),
    ({"method": "pipeline", "params": {"steps": []}}, ["params.steps must be a non-empty list"]),
    ({"method": "pipeline", "params": {"steps": [{"method": "wanda"}, 7]}},
     ["pipeline step 2", "a recipe is a JSON object"]),
    ({"method": "pipeline", "params": {"steps": [{"method": "rtn"}], "order": 1}},
     ["unknown key 'order'", "allowed keys: steps"]),
    ({"method": ["rtn"]}, ["unknown compression method ['rtn']", "choose one of"]),
    ({"method": "gtpq"}, ["unknown compression method 'gtpq' (did you mean 'gptq'?)"]),
    ({"method": "rtn", "parms": {"bits": 4}}, ["unknown key 'parms' (did you mean 'params'?)"]),
    ({"method": "rtn", "params": {"bitz": 4}}, ["unknown key 'bitz' (did you mean 'bits'?)"]),
    ([{"method": "rtn"}], ["a recipe is a JSON object"]),
    ({"method": "rtn", "params": {"int_zero": "o_proj"}},
     ["int_zero must be a list of strings", '"int_zero": []']),
    ({"method": "rtn", "params": {"int_zero": ["o_proj", 3]}}, ["int_zero must be a list"]),
    ({"method": "rtn", "params": {"int_zero": ["layers.0.o_proj"]}},
     ["name linears as inside a block", '["o_proj", "down_proj"]']),
    ({"method": "rtn", "params": {"bits": 4, "symmetric": True, "int_zero": ["o_proj"]}},
     ["asymmetric low-bit grid"]),
    ({"method": "rtn", "params": {"bits": 8, "int_zero": ["o_proj"]}}, ["bits=4"]),
    ({"method": "rtn", "params": {"embedding_bits": 6}}, ["embedding_bits=6: choose 8 or 4"]),
])
def test_wrong_types_and_keys_name_the_field_and_the_fix(doc: object,
                                                        needles: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        from_dict(doc)  # type: ignore[arg-type]
    for needle in needles:
        assert needle in str(e.value)


def test_valid_json_values_still_load() -> None:
    assert from_dict({"method": "smoothquant", "params": {"alpha": 1}}) == SmoothQuant(alpha=1.0)
    assert isinstance(from_dict({"method": "smoothquant", "params": {"alpha": 1}}).alpha, float)
    assert from_dict({"method": "rtn", "params": {"bits": 8, "group_size": None}}) == RTN(bits=8)
    assert from_dict({"method": "wanda", "params": None}) == Wanda()
    two = Pipeline((Wanda(0.5), GPTQ(bits=4)))
    assert from_dict(json.loads(two.to_json())) == two
    for r in PRESETS.values():
        assert from_dict(json.loads(r.to_json())) == r
    mixed = RTN(bits=4, group_size=32, int_zero=("o_proj", "down_proj"), embedding_bits=8)
    assert from_dict(json.loads(mixed.to_json())) == mixed  # a JSON list back to a tuple
    assert RTN(bits=4, int_zero=["o_proj"]) == RTN(bits=4, int_zero=("o_proj",))


def test_recipe_files_are_read_and_their_errors_name_the_file(tmp_path: Path) -> None:
    good = tmp_path / "r.json"
    good.write_text(json.dumps({"method": "rtn", "params": {"bits": 4, "group_size": 64}}))
    assert parse_recipe(str(good)) == RTN(bits=4, group_size=64)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"method": "wanda", "params": {"sparsity": "0.5"}}))
    with pytest.raises(ConfigError, match=r"bad\.json.*sparsity must be"):
        parse_recipe(str(bad))
    binary = tmp_path / "bin.json"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match="is not text"):
        parse_recipe(str(binary))
    with pytest.raises(ConfigError, match="cannot read recipe file"):
        parse_recipe(str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="a recipe is a preset name"):
        parse_recipe(5)  # type: ignore[arg-type]


@pytest.mark.parametrize("recipe,needle", [
    ('{"method": "wanda", "params": {"sparsity": "0.5"}}', "sparsity must be a finite number"),
    ('{"method": "rtn", "version": "2"}', "version must be an integer"),
    ('{"method": "rtn", "params": 5}', "params must be a JSON object"),
    ('{"method": "pipeline", "params": {"steps": 5}}', "params.steps"),
    ('{"method": ["rtn"]}', "unknown compression method"),
])
def test_compress_cli_prints_one_line_and_exits_2(tmp_path: Path, capsys, recipe: str,
                                                  needle: str) -> None:
    argv = ["compress", "--model", str(tmp_path / "no-model"), "--recipe", recipe,
            "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert not (tmp_path / "out").exists()


def test_compress_cli_takes_a_recipe_file(tmp_path: Path, capsys) -> None:
    f = tmp_path / "recipe.json"
    f.write_text('{"method": "rtn", "params": {"bits": "4"}}')
    assert main(["compress", "--model", str(tmp_path / "m"), "--recipe", str(f),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "recipe.json" in err and "bits must be" in err


# -- fuzz: any dict loads or raises an EdgeweaveError, nothing else -------------------------
# conftest's autouse `_home` is function-scoped; it only sets EDGEWEAVE_HOME, which no
# example changes, so sharing it across examples is safe
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
KEYS = ["method", "version", "params", "steps", "bits", "group_size", "symmetric", "pad",
        "sparsity", "pattern", "damp", "alpha", "energy", "ratio", "loss", "lr"]
scalars = (st.none() | st.booleans() | st.integers() | st.floats()
           | st.sampled_from([*RECIPES, "2:4", "kd", "unstructured"]) | st.text(max_size=10))
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=4),
    max_leaves=16)
recipe_like = st.fixed_dictionaries(
    {"method": st.sampled_from(sorted(RECIPES)) | values},
    optional={"version": values, "params": values | st.dictionaries(st.sampled_from(KEYS), values)})


mutations = shared_mutations(values)


def _loads_or_refuses(doc: object) -> None:
    with contextlib.suppress(EdgeweaveError):  # any other exception fails the test
        from_dict(doc)  # type: ignore[arg-type]


@FUZZ
@given(values | recipe_like)
def test_fuzz_arbitrary_recipe_dicts(doc: object) -> None:
    _loads_or_refuses(doc)


@FUZZ
@given(st.sampled_from([json.loads(r.to_json()) for r in PRESETS.values()]).flatmap(mutations))
def test_fuzz_mutated_presets(doc: object) -> None:
    _loads_or_refuses(doc)


@FUZZ
@given(recipe_like.map(json.dumps) | values.map(json.dumps) | st.text(max_size=80))
def test_fuzz_recipe_specs(spec: str) -> None:  # what `--recipe` receives
    with contextlib.suppress(EdgeweaveError):
        parse_recipe(spec)
