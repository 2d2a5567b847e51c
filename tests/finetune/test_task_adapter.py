"""An adapter trained on an IoT task's train split (``finetune --data task:NAME``) and the
task suite evaluating with it unmerged (``tasks eval --adapter``)."""

from __future__ import annotations

import json

import pytest

from edgeweave.bench.tasks import get_task, load_split
from edgeweave.cli.app import main
from edgeweave.finetune.config import LoRAConfig, TrainConfig
from edgeweave.finetune.run import finetune, task_examples
from tests.conftest import bpe_folder
from tests.helpers import cli_error

pytestmark = pytest.mark.integration  # the bundled tokenizer and the task data


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory):
    return bpe_folder(tmp_path_factory.mktemp("bpe") / "tiny-bpe")


def test_task_examples_are_train_prompts_with_their_answers(folder) -> None:
    from edgeweave.models.tokenizer import Tokenizer

    tok = Tokenizer(folder)
    exs = task_examples(tok, "task:occupancy", seq_len=256, limit=5)
    train = load_split("occupancy").train[:5]
    t = get_task("occupancy")
    for ex, item in zip(exs, train, strict=True):
        text = tok.decode(list(ex.ids))
        assert text.startswith(t.template.instruction) and item.query in text
        assert tok.decode(list(ex.ids[ex.n_prompt:])).strip().startswith(item.answer)
    test_queries = {i.query for i in load_split("occupancy").test}
    assert not any(q in tok.decode(list(e.ids)) for e in exs for q in test_queries)


def test_an_adapter_trained_on_a_task_runs_in_the_task_suite(folder, tmp_path, capsys) -> None:
    out = tmp_path / "occupancy-lora"
    res = finetune(str(folder), "task:occupancy", lora=LoRAConfig(rank=4, alpha=8),
                   train_cfg=TrainConfig(steps=6, lr=2e-2, batch_size=4, micro_batch_size=4,
                                         seq_len=192), out=out, limit=40)
    assert res.adapter == out and res.eval_loss_after < res.eval_loss_before
    common = ["tasks", "eval", "--task", "occupancy", "--model", str(folder), "--limit", "2",
              "--demos", "none", "--backend", "torch", "--variant", "fp32", "--constrained"]
    assert main([*common, "--adapter", str(out), "--json"]) in (0, None)
    got = json.loads(capsys.readouterr().out)["result"]
    assert got["n"] == 2 and got["invalid_rate"] == 0.0
    line = cli_error(capsys, [*common, "--adapter", str(tmp_path / "missing")])
    assert "missing" in line
