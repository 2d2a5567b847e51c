"""Automatic prompt templates: candidates are scored on a validation split carved from the
train items, never on test items; the chosen template is written atomically and read back by
``tasks eval --template``."""

from __future__ import annotations

import json

import pytest

from edgeweave.bench.tasks import evaluate_task, get_task, load_split
from edgeweave.bench.tasks.prompts import PromptBuilder, PromptSettings
from edgeweave.bench.tasks.tuning import (
    load_template,
    save_tuning,
    structural_variants,
    tune_prompt,
    validation_split,
)
from edgeweave.cli.app import main
from edgeweave.errors import ConfigError
from edgeweave.prompt.templates import PromptTemplate
from tests.conftest import bpe_folder
from tests.helpers import cli_error


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory):
    return bpe_folder(tmp_path_factory.mktemp("bpe") / "tiny-bpe")


@pytest.fixture(scope="module")
def tiny_lm(folder):
    from edgeweave.models.checkpoint import load_folder

    return load_folder(folder)


@pytest.mark.parametrize("name", ["occupancy", "wikiqa"])
def test_validation_split_is_train_only_and_balanced(name: str) -> None:
    split = load_split(name)
    val = validation_split(name, n_val=8)
    train_ids, test_ids = {i.id for i in split.train}, {i.id for i in split.test}
    assert len(val.test) == 8
    assert {i.id for i in val.test} <= train_ids and not {i.id for i in val.test} & test_ids
    assert {i.id for i in val.train} == train_ids - {i.id for i in val.test}
    labels = [i.label for i in val.test]
    assert max(labels.count(x) for x in set(labels)) - min(
        labels.count(x) for x in set(labels)) <= 1
    with pytest.raises(ConfigError, match="at least 1"):
        validation_split(name, n_val=0)
    with pytest.raises(ConfigError, match="fewer validation items"):
        validation_split(name, n_val=len(split.train))


def test_template_round_trip_and_bad_documents() -> None:
    t = get_task("occupancy").template
    assert PromptTemplate.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    for bad in ([], {"input_label": "x"}, {"instruction": "x", "colour": 1},
                {"instruction": "x", "choices": "ab"}, {"instruction": "x", "output_label": 3}):
        with pytest.raises(ConfigError):
            PromptTemplate.from_dict(bad)


def test_a_given_template_replaces_the_tasks_own() -> None:
    base = get_task("activity").template
    mine = PromptTemplate("Say which sport the wrist sensor sees.", "Wrist", "Sport",
                          base.choices)
    task = get_task("activity")
    built = PromptBuilder(task, PromptSettings(demos="knn", k=2, template=mine)).build(
        load_split("activity").test[:2])
    for b in built:
        assert b.prompt.startswith(mine.instruction) and b.prompt.endswith("Sport:")
        assert base.instruction not in b.prompt and "\nWrist: " in b.prompt


def test_structural_variants_keep_the_answer_slot() -> None:
    base = get_task("occupancy").template
    cands = structural_variants(base)
    assert cands[0].template == base and cands[0].origin == "task"
    assert len({c.template for c in cands}) == len(cands)  # all different
    assert any(not c.template.choices for c in cands)


@pytest.mark.integration  # the bundled tokenizer comes from the converted model
def test_tuning_never_builds_a_prompt_for_a_test_item(tiny_lm, tmp_path, monkeypatch) -> None:
    built_ids: list[str] = []
    real_build = PromptBuilder.build

    def spy(self, items):  # records, then builds as usual
        built_ids.extend(i.id for i in items)
        return real_build(self, items)

    monkeypatch.setattr(PromptBuilder, "build", spy)
    # budget: the tiny model's context is 256 tokens
    res = tune_prompt("occupancy", tiny_lm, demos="knn", k=2, n_val=4, n_induced=2,
                      constrained=True, budget_tokens=200)
    test_ids = {i.id for i in load_split("occupancy").test}
    assert built_ids and not set(built_ids) & test_ids
    assert set(built_ids) == set(res.validation_ids)
    origins = [s.candidate.origin for s in res.scored]
    assert origins[0] == "task" and any(o.startswith("structural:") for o in origins)
    assert res.best.score == max(s.score for s in res.scored)
    assert all(s.invalid_rate == 0.0 for s in res.scored)  # constrained: every answer parses
    path = save_tuning(res, tmp_path)
    assert path == tmp_path / "occupancy" / "template.json"
    assert load_template(path, "occupancy") == res.best.candidate.template
    with pytest.raises(ConfigError, match="tuned for task 'occupancy'"):
        load_template(path, "activity")
    # the chosen template is what evaluation then uses
    out = evaluate_task("occupancy", tiny_lm, limit=2, template=load_template(path),
                        constrained=True)
    assert out["template"] == res.best.candidate.template.to_dict()


@pytest.mark.integration
def test_cli_tune_then_eval(folder, tmp_path, capsys) -> None:
    common = ["--task", "occupancy", "--model", str(folder), "--demos", "none",
              "--backend", "torch", "--variant", "fp32", "--constrained"]
    assert main(["tasks", "tune-prompt", *common, "--val", "3", "--induced", "1",
                 "--out", str(tmp_path)]) in (0, None)
    assert "chosen:" in capsys.readouterr().out
    path = tmp_path / "occupancy" / "template.json"
    doc = json.loads(path.read_text())
    assert doc["kind"] == "edgeweave-prompt-template" and len(doc["validation_ids"]) == 3
    assert main(["tasks", "eval", *common, "--limit", "2", "--template", str(path),
                 "--json"]) in (0, None)
    res = json.loads(capsys.readouterr().out)["result"]
    assert res["template"] == doc["template"]
    line = cli_error(capsys, ["tasks", "eval", *common, "--template", str(tmp_path / "no")])
    assert "tune-prompt" in line
    line = cli_error(capsys, ["tasks", "tune-prompt", *common, "--val", "0"])
    assert "at least 1" in line
