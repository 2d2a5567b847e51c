"""Task suite: deterministic disjoint splits, parsers, metrics on hand cases, baselines,
prompts, the CLI listing, and one short run of the bundled model."""

from __future__ import annotations

import numpy as np
import pytest

import edgeweave.bench.tasks as tasks_pkg
from edgeweave.bench.tasks import base as tasks_base
from edgeweave.bench.tasks import example_prompts, get_task, load_split, task_names
from edgeweave.bench.tasks.base import Item, Split, parse_label, task_modules
from edgeweave.bench.tasks.prompts import PromptBuilder, PromptSettings
from edgeweave.errors import ConfigError
from tests.helpers import module_in_package

# tasks whose data leaves no room for a different test sample under another seed
ONE_TEST_SAMPLE = {"occupancy", "anomaly"}


def test_registry_holds_one_task_per_task_module() -> None:
    """Every module of bench/tasks but the helpers registers its task; the registry is
    what the folder holds, found without a list to edit."""
    modules = [type(get_task(n)).__module__ for n in task_names()]
    assert sorted(modules) == task_modules() and len(set(modules)) == len(modules)
    assert len(modules) >= 6  # the shipped suite: four sensor classifications, forecast, QA
    with pytest.raises(ConfigError, match="unknown task"):
        get_task("weather")


@pytest.mark.parametrize("name", task_names())
def test_split_is_deterministic_disjoint_and_sized(name: str) -> None:
    check_split(name)


def check_split(name: str) -> None:
    task = get_task(name)
    a, b = task.build(0), task.build(0)
    assert [i.id for i in a.test] == [i.id for i in b.test]
    assert [i.answer for i in a.train] == [i.answer for i in b.train]
    assert {i.id for i in a.train}.isdisjoint(i.id for i in a.test)
    assert len(a.test) == task.test_size and len(a.train) >= 20
    assert all(i.query and i.answer for i in a.train + a.test)
    if not task.sensor:  # grounded QA: disjoint articles, not only item ids
        assert {i.meta["title"] for i in a.train}.isdisjoint(i.meta["title"] for i in a.test)
    else:
        assert all(i.window is not None and i.features is not None for i in a.test)
        # no identical window on both sides
        tr = {i.window.tobytes() for i in a.train}
        assert not any(i.window.tobytes() in tr for i in a.test)
    # gold answers parse back to themselves (demonstrations teach the right format)
    assert all(task.parse(" " + i.answer) == i.answer for i in a.test)
    # a different seed gives a different test sample where the data leaves room for one
    if name not in ONE_TEST_SAMPLE:
        assert [i.id for i in task.build(1).test] != [i.id for i in a.test]


TASK_FILE = '''
"""Occupancy read from the same windows as another task: one file, no list to edit."""
from edgeweave.bench.tasks.base import register_task
from edgeweave.bench.tasks.occupancy import OccupancyTask


@register_task
class MeetingRoomTask(OccupancyTask):
    name = "meeting_room"
    description = "Meeting room in use or free (the occupancy windows, another prompt)"
'''


@pytest.fixture
def task_file(tmp_path):
    with module_in_package(tasks_pkg, tmp_path, "meeting_room", TASK_FILE):
        try:
            yield "meeting_room"
        finally:
            tasks_base._TASKS.pop("meeting_room", None)


def test_a_task_file_is_a_task_everywhere(task_file, capsys) -> None:
    from edgeweave.cli.app import main

    assert task_file in task_names() and "edgeweave.bench.tasks.meeting_room" in task_modules()
    check_split(task_file)
    assert main(["tasks", "list"]) == 0
    assert "meeting_room" in capsys.readouterr().out


def test_split_rejects_overlap() -> None:
    it = Item("x", "q", "a")
    with pytest.raises(ConfigError, match="share items"):
        Split((it,), (it,))


def test_parsers() -> None:
    assert parse_label(" Running.", ("walking", "running")) == "running"
    assert parse_label("walking, then running", ("walking", "running")) == "walking"
    assert parse_label("nothing here", ("walking",)) is None
    assert get_task("appliance").parse(" type 3") == "type3"
    assert get_task("appliance").parse(" type10") is None
    an = get_task("anomaly")
    assert an.parse(" anomaly at end") == "anomaly at end"
    assert an.parse(" Abnormal spike at the start") == "anomaly at start"
    assert an.parse(" normal") == "normal" and an.parse(" ???") is None
    assert get_task("forecast").parse(" 42, then 50") == "42"
    qa = get_task("wikiqa")
    assert qa.parse(" 1947.") == "1947" and qa.parse(" Unknown") == "unknown"
    assert qa.parse(" The context does not say") == "unknown"
    assert qa.parse("") is None and qa.parse(" Paris") == "paris"


def test_classification_metric_on_hand_case() -> None:
    t = get_task("activity")
    items = [Item(str(i), "q", lab, lab) for i, lab in enumerate(["walking", "walking",
                                                                    "running", "standing"])]
    m = t.score(items, ["walking", "running", "running", None])
    assert m["accuracy"] == 0.5 and m["invalid_rate"] == 0.25
    # per class F1: walking 2/3, running 2/3, standing 0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)


def test_anomaly_metric_on_hand_case() -> None:
    t = get_task("anomaly")
    items = [Item("a", "q", "anomaly at start", "anomaly"), Item("b", "q", "anomaly at end",
                                                                 "anomaly"),
             Item("c", "q", "normal", "normal"), Item("d", "q", "normal", "normal")]
    m = t.score(items, ["anomaly at start", "normal", "anomaly at middle", "normal"])
    assert m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5
    assert m["accuracy"] == 0.5 and m["localisation"] == 1.0


def test_forecast_metric_on_hand_case() -> None:
    t = get_task("forecast")
    items = [Item("a", "q", "50", meta={"last": 45}), Item("b", "q", "10", meta={"last": 40})]
    m = t.score(items, ["55", None])
    assert m["accuracy"] == 0.5  # |55-50| <= 10; the unparseable one misses
    assert m["mae"] == (5 + 30 + 50) / 2 and m["naive_mae"] == (5 + 30) / 2
    assert m["naive_accuracy"] == 0.5 and m["invalid_rate"] == 0.5


def test_wikiqa_hallucination_metric_on_hand_case() -> None:
    t = get_task("wikiqa")
    ctx = "It opened in 1999 and closed in 2005."
    items = [Item("a", "q", "1999", "year", meta={"context": ctx}),
             Item("b", "q", "1999", "year", meta={"context": ctx}),
             Item("c", "q", "unknown", "unknown", meta={"context": ctx}),
             Item("d", "q", "unknown", "unknown", meta={"context": ctx})]
    m = t.score(items, ["1999", "1850", "2005", "unknown"])
    assert m["accuracy"] == 0.5
    # 1850 is not in the context; 2005 answers an unanswerable question
    assert m["hallucination_rate"] == 0.5
    assert m["unsupported_rate"] == 0.5 and m["unanswerable_answered_rate"] == 0.5


@pytest.mark.parametrize("name", ["activity", "occupancy", "anomaly", "forecast"])
def test_nearest_neighbour_baseline_beats_chance(name: str) -> None:
    task = get_task(name)
    res = task.baseline(load_split(name, 0))
    chance = {"activity": 0.25, "occupancy": 0.5, "anomaly": 0.0, "forecast": 0.0}[name]
    assert res[task.metric] > chance


def test_prompts_with_knn_demos_fit_budget_and_pick_neighbours() -> None:
    task = get_task("activity")
    b = PromptBuilder(task, PromptSettings(demos="knn", k=3, budget_tokens=400,
                                           ordering="most_similar_last"), lambda s: len(s) // 3)
    built = b.build(b.split.test[:5])
    for p in built:
        assert len(p.prompt) // 3 <= 400 and len(p.demo_ids) == 3
        assert p.prompt.endswith("Activity:")
        assert p.prompt.count("Readings:") == 4
    # kNN demos agree with the label far more often than chance on this easy task
    agree = np.mean([b.store.get(d).label == p.item.label for p in built for d in p.demo_ids])
    assert agree > 0.6
    zero = PromptBuilder(task, PromptSettings(demos="none")).build(b.split.test[:1])[0]
    assert zero.demo_ids == () and zero.prompt.count("Readings:") == 1
    with pytest.raises(ConfigError, match="demos mode"):
        PromptSettings(demos="all")


def test_example_prompts_for_the_demo() -> None:
    rows = example_prompts("occupancy", n=2, demos="random")
    assert len(rows) == 2 and rows[0]["channels"] == ["temp", "humidity", "co2"]
    assert np.asarray(rows[0]["window"]).shape == (3, 4)
    assert rows[0]["prompt"].endswith("Room:") and rows[0]["answer"] in ("occupied", "empty")


def test_cli_lists_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    from edgeweave.cli.app import main

    assert main(["tasks", "list"]) == 0
    out = capsys.readouterr().out
    assert "activity" in out and "wikiqa" in out


@pytest.mark.integration
def test_bundled_model_on_a_few_items(tmp_path) -> None:
    """The real SmolLM2-135M answers 3 activity items with kNN demos end to end."""
    from edgeweave.bench.tasks import evaluate_task
    from edgeweave.models import load

    lm = load()
    res = evaluate_task("activity", lm, demos="knn", limit=3, k=2, budget_tokens=200,
                        return_predictions=True)
    assert res["n"] == 3 and 0.0 <= res["accuracy"] <= 1.0
    assert res["mean_prompt_tokens"] <= 200 and res["mean_latency_s"] > 0
    assert res["mean_demos"] == 2
    # the model answers in the demonstrated format: every output parses to a label
    assert all(p["prediction"] in ("standing", "walking", "running", "badminton")
               for p in res["predictions"])


def test_demo_questions_fill_the_budget_by_the_given_token_count() -> None:
    """The demo counts with the served tokenizer (as its adapter's training prompts do): a
    counter that charges more per character fits fewer demonstrations."""
    from edgeweave.demo import DemoConfig, sensor_questions

    cfg = DemoConfig(tasks=("occupancy",), per_task=2)
    approx = sensor_questions(cfg)
    dear = sensor_questions(cfg, lambda text: len(text))  # a token per character: 3x dearer
    assert [q["id"] for q in approx] == [q["id"] for q in dear]
    assert all(d["demos_used"] <= a["demos_used"] for a, d in zip(approx, dear, strict=True))
    assert sum(d["demos_used"] for d in dear) < sum(a["demos_used"] for a in approx)
