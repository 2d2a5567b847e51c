"""Constrained answers on the task suite: with the task's answer format every answer parses.

The model is a tiny random-weight one with the bundled tokenizer: left alone it writes noise,
so a zero invalid rate comes from the format, not from the model.
"""

from __future__ import annotations

import json
import re

import pytest

from edgeweave.bench.tasks import evaluate_task, get_task, load_split, task_names
from edgeweave.cli.app import main
from tests.conftest import bpe_folder

pytestmark = pytest.mark.integration  # the bundled tokenizer comes from the converted model


def admits(fmt, text: str) -> bool:
    if fmt.kind == "choice":
        return text in fmt.choices
    return re.fullmatch(fmt.pattern, text) is not None


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory):
    from edgeweave.models.checkpoint import load_folder

    return load_folder(bpe_folder(tmp_path_factory.mktemp("bpe") / "tiny-bpe"))


@pytest.mark.parametrize("name", task_names())
def test_the_format_admits_every_gold_answer(name: str) -> None:
    """A format that refused a right answer would cap accuracy below what the model knows."""
    fmt = get_task(name).answer_format()
    assert fmt is not None
    split = load_split(name)
    assert all(admits(fmt, " " + i.answer) for i in split.train + split.test)


@pytest.mark.parametrize("name", task_names())
def test_constrained_answers_are_never_invalid(name: str, tiny_lm) -> None:
    task = get_task(name)
    res = evaluate_task(name, tiny_lm, demos="none", limit=3, constrained=True,
                        return_predictions=True)
    assert res["constrained"] is True and res["n"] == 3
    assert res["invalid_rate"] == 0.0
    fmt = task.answer_format()
    for row in res["predictions"]:
        assert admits(fmt, row["output"]), row
        assert row["prediction"] == task.parse(row["output"]) is not None


def test_cli_constrained_eval(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = bpe_folder(tmp_path / "tiny-cli")
    rc = main(["tasks", "eval", "--task", "occupancy", "--model", str(folder), "--limit", "2",
               "--demos", "none", "--backend", "torch", "--variant", "fp32", "--constrained",
               "--json"])
    assert rc in (0, None)
    out = json.loads(capsys.readouterr().out)
    assert out["result"]["constrained"] is True
    assert out["result"]["invalid_rate"] == 0.0 and out["result"]["n"] == 2
