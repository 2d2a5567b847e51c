"""The main job end to end on the real bundled model: the demo pipeline and a small bench
suite (resumable), both producing a report that renders."""

from __future__ import annotations

import json

import pytest

from edgeweave.bench.render import non_blank_fraction, render

pytestmark = pytest.mark.integration


def test_demo_pipeline_answers_sensor_questions_through_the_api(tmp_path):
    from edgeweave.demo import ADAPTER_NAME, DemoConfig, run_demo

    steps = []
    # a two-step adapter: the path (train, cache, serve unmerged, ask again), not its accuracy
    res = run_demo(DemoConfig(tasks=("occupancy", "activity"), out=tmp_path, adapter_steps=2),
                   step=lambda d, i, n: steps.append(d))
    assert len(res.answers) == 2 and {a["task"] for a in res.answers} == {"occupancy", "activity"}
    for a in res.answers:
        assert a["prompt_tokens"] > 50 and a["completion_tokens"] >= 1
        assert a["score"] is not None
        # constrained by default: the answer is one of the task's labels, never free text
        assert a["constrained"] and a["parsed"] is not None
        assert a["answer"] == a["parsed"]
    kinds = {r["kind"] for r in res.rows}
    assert {"variant", "plan", "run", "answer", "adapt"} <= kinds
    adapt = next(r for r in res.rows if r["kind"] == "adapt")
    before = next(r for r in res.rows if r["kind"] == "plan" and r["planner"] == "edgeweave")
    assert adapt["device"] in {s["device"] for s in before["stages"]}  # it held blocks...
    assert all(s["device"] != adapt["device"] for s in adapt["stages"])  # ...and now holds none
    assert adapt["moved_layers"] > 0 and adapt["switch_s"] > 0
    assert any(s.startswith("compress") for s in steps) and res.url.startswith("http://127.0.0.1")
    # the same questions again through the task adapter, on the plan that runs after the drop
    assert [(a["task"], a["id"]) for a in res.adapted] == [(a["task"], a["id"])
                                                         for a in res.answers]
    assert {a["model"] for a in res.adapted} == {ADAPTER_NAME}
    assert all(a["constrained"] and a["answer"] == a["parsed"] for a in res.adapted)
    assert res.adapted[0]["plan"] == res.answers[-1]["plan"]
    assert any(s.startswith("train the task adapter") for s in steps)
    sizes = {r["variant"]: r["size_mb"] for r in res.rows if r["kind"] == "variant"}
    assert sizes["int8"] < 0.3 * sizes["fp32"] and sizes["int4"] < sizes["int8"]
    assert f"base vs {ADAPTER_NAME}" in res.summary.read_text()
    shot = render(res.report, tmp_path / "demo.png")
    assert shot.errors == () and non_blank_fraction(shot.png) > 0.05


def test_bench_suite_runs_and_resumes(tmp_path):
    from edgeweave.bench.runner import run_bench
    from edgeweave.bench.suite import Suite

    suite = Suite("test", variants=("fp32", "int8"), tasks=("occupancy",), task_limit=2,
                  ppl_tokens=256, decode_tokens=8, fleets=("home",))
    html, md = run_bench(suite, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in rows}
    assert {"variant", "task", "task_baseline", "device", "plan", "run"} <= kinds
    v = {r["variant"]: r for r in rows if r["kind"] == "variant"}
    assert v["fp32"]["ppl_wiki"] > 1 and v["int8"]["size_mb"] < v["fp32"]["size_mb"]
    assert all(r["identical"] for r in rows if r["kind"] == "run" and r["codec"] == "fp16")
    assert all(r.get("predicted") for r in rows if r["kind"] in ("device", "plan"))
    before = len(rows)
    run_bench(suite, tmp_path)  # resumed: nothing left to measure
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == before
    assert "Compression variants" in html.read_text() and md.read_text().startswith("# ")
