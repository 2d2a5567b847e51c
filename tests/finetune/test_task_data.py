"""Training data from IoT tasks' train splits: zero-shot or kNN-demonstration prompts, one task
or several (``finetune --data task:A,B:knn``), and task adapters cached like variants."""

from __future__ import annotations

import pytest

from edgeweave.bench.tasks import get_task, load_split
from edgeweave.errors import ConfigError
from edgeweave.finetune.task_data import TaskData, task_examples
from tests.conftest import bpe_folder

pytestmark = pytest.mark.integration  # the bundled tokenizer and the task data


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory):
    return bpe_folder(tmp_path_factory.mktemp("bpe") / "tiny-bpe")


@pytest.fixture(scope="module")
def tok(folder):
    from edgeweave.models.tokenizer import Tokenizer

    return Tokenizer(folder)


def test_spellings_parse_and_bad_ones_say_how_to_write_them() -> None:
    assert TaskData.parse("task:occupancy") == TaskData(("occupancy",))
    both = TaskData.parse("task:activity, occupancy:knn")
    assert both.tasks == ("activity", "occupancy") and both.demos == "knn"
    assert TaskData.parse(both.spelling()) == both
    for bad, says in (("task:", "task:NAME"), ("task:nosuch", "unknown task"),
                      ("task:occupancy:random", ":knn"), ("wiki", "not task data")):
        with pytest.raises(ConfigError, match=says):
            TaskData.parse(bad)


def test_knn_prompts_carry_demonstrations_from_the_other_fold_only(tok) -> None:
    task = get_task("occupancy")
    train = load_split("occupancy").train
    exs = task_examples(tok, "task:occupancy:knn", seq_len=640, limit=12)
    assert len(exs) == 12
    queries = {i.query: n for n, i in enumerate(train)}
    test_queries = {i.query for i in load_split("occupancy").test}
    for n, (ex, item) in enumerate(zip(exs, train, strict=False)):
        prompt = tok.decode(list(ex.ids[:ex.n_prompt]))
        assert tok.decode(list(ex.ids[ex.n_prompt:])).strip().startswith(item.answer)
        assert prompt.startswith(task.template.instruction) and prompt.count(item.query) == 1
        assert prompt.rstrip().endswith(task.template.render(item.query).rstrip()[-40:])
        shown = [j for q, j in queries.items() if q in prompt and j != n]
        assert len(shown) >= 2, "a kNN prompt shows demonstrations"
        assert all(j % 2 != n % 2 for j in shown), "demonstrations come from the other fold"
        assert not any(q in prompt for q in test_queries)


def test_several_tasks_interleave_and_each_keeps_its_own_limit(tok) -> None:
    exs = task_examples(tok, TaskData(("activity", "occupancy")), seq_len=256, limit=3)
    texts = [tok.decode(list(e.ids)) for e in exs]
    which = [get_task("activity").template.instruction in t for t in texts]
    assert len(exs) == 6 and which == [True, False] * 3


def test_a_task_adapter_is_trained_once_and_retrained_when_damaged(folder, tmp_path,
                                                                   monkeypatch) -> None:
    from edgeweave.finetune import run
    from edgeweave.finetune.cached import AdapterRecipe, adapter_path, cached_adapter
    from edgeweave.finetune.config import ADAPTER_WEIGHTS, LoRAConfig, TrainConfig
    from edgeweave.runtime.adapters import AdapterSpec, load_adapter

    monkeypatch.setenv("EDGEWEAVE_HOME", str(tmp_path / "home"))
    trained = []
    real = run.finetune
    monkeypatch.setattr(run, "finetune", lambda *a, **kw: trained.append(1) or real(*a, **kw))
    recipe = AdapterRecipe(TaskData(("occupancy", "activity"), "knn"), LoRAConfig(rank=2),
                           TrainConfig(steps=2, seq_len=320), limit=8)
    path = cached_adapter(recipe, str(folder))
    assert path == adapter_path(recipe, str(folder)) and trained == [1]
    assert load_adapter(AdapterSpec("t", path)).factors  # it serves as it is
    assert cached_adapter(recipe, str(folder)) == path and trained == [1]  # reused
    other = AdapterRecipe(recipe.data, recipe.lora, TrainConfig(steps=3, seq_len=320), limit=8)
    assert adapter_path(other, str(folder)) != path  # another recipe, another folder
    w = path / ADAPTER_WEIGHTS
    w.write_bytes(w.read_bytes()[:-8])  # torn weights: trained again, not served
    assert cached_adapter(recipe, str(folder)) == path and trained == [1, 1]
    assert load_adapter(AdapterSpec("t", path)).factors
