"""The benchmark store and report: resumable JSON lines, Pareto fronts, and an HTML page that
really renders in headless Chromium (screenshot non-blank, no console errors)."""

from __future__ import annotations

import json

import pytest

from edgeweave.bench.energy import EnergyMeter, per_token
from edgeweave.bench.plots import pareto
from edgeweave.bench.render import non_blank_fraction, render
from edgeweave.bench.report import build, write_report
from edgeweave.bench.store import ResultStore


def sample_rows() -> list[dict]:
    stages = [{"device": "hub", "start": 0, "end": 4, "variant": "int8", "codec": "fp16"},
              {"device": "edge", "start": 4, "end": 30, "variant": "int8", "codec": "fp32"}]
    return [
        {"key": "variant/fp32", "kind": "variant", "variant": "fp32", "size_mb": 538.0,
         "bits_per_weight": 32, "ppl_wiki": 15.8, "decode_tps": 30.0, "ttft_s": 0.2,
         "tpot_s": 1 / 30, "peak_rss_mb": 900, "energy_j_per_token": 0.5, "energy_source": "model"},
        {"key": "variant/int8", "kind": "variant", "variant": "int8", "size_mb": 135.0,
         "bits_per_weight": 8.06, "ppl_wiki": 15.9, "decode_tps": 60.0, "ttft_s": 0.1,
         "tpot_s": 1 / 60, "peak_rss_mb": 500, "energy_j_per_token": 0.25, "energy_source": "model"},
        {"key": "variant/int4", "kind": "variant", "variant": "int4", "size_mb": 90.0,
         "bits_per_weight": 4.5, "ppl_wiki": 17.0, "decode_tps": 55.0, "ttft_s": 0.1,
         "tpot_s": 1 / 55, "peak_rss_mb": 450, "energy_j_per_token": 0.27, "energy_source": "model"},
        {"key": "task/fp32/activity/knn", "kind": "task", "variant": "fp32", "task": "activity",
         "demos": "knn", "metric": "accuracy", "value": 0.5, "n": 8},
        {"key": "task/int8/activity/knn", "kind": "task", "variant": "int8", "task": "activity",
         "demos": "knn", "metric": "accuracy", "value": 0.5, "n": 8},
        {"key": "task_baseline/activity", "kind": "task_baseline", "task": "activity",
         "value": 0.9},
        {"key": "device/rpi4/int8", "kind": "device", "device": "rpi4", "tier": "sbc",
         "variant": "int8", "fits": True, "memory_mb": 140, "tpot_s": 0.08, "ttft_s": 1.2,
         "energy_j_per_token": 0.5},
        {"key": "plan/home/edgeweave", "kind": "plan", "fleet": "home", "planner": "edgeweave",
         "n_layers": 30, "stages": stages, "tpot_s": 0.02, "ttft_s": 0.03,
         "energy_j_per_token": 0.3, "link_bytes_per_token": 1152},
        {"key": "plan/home/memory", "kind": "plan", "fleet": "home", "planner": "memory",
         "n_layers": 30, "stages": stages, "tpot_s": 0.04, "ttft_s": 0.2,
         "energy_j_per_token": 0.44, "link_bytes_per_token": 2304},
        {"key": "plan/home/cloud", "kind": "plan", "fleet": "home", "planner": "cloud",
         "error": "no cloud device in this fleet"},
        {"key": "run/home/edgeweave/fp16", "kind": "run", "fleet": "home", "codec": "fp16",
         "n_layers": 30, "stages": stages, "decode_tps": 25.0, "ttft_s": 0.3,
         "wire_bytes_per_token": 1152, "identical": True},
    ]


def test_pareto_front_minimises_x_and_optimises_y():
    pts = [(1.0, 0.5), (2.0, 0.9), (3.0, 0.8), (0.5, 0.1)]
    assert pareto(pts, higher_is_better=True) == [3, 0, 1]  # (3.0, 0.8) is dominated by (2.0, 0.9)
    assert pareto([(1.0, 10.0), (2.0, 12.0), (3.0, 9.0)], higher_is_better=False) == [0, 2]


def test_report_tables_and_headlines():
    page, md = build(sample_rows(), {"suite": "test", "model": "m"})
    assert "2.00× fp32" in page  # int8 decode vs fp32
    assert "2.0× faster than memory" in page
    assert "infeasible" in page and "no cloud device" in page
    # self-contained: no scripts, no stylesheets or images fetched from anywhere
    assert "<script" not in page and "<link" not in page
    assert 'src="http' not in page and "url(http" not in page
    assert "| int8 | 135 |" in md.replace(".0 |", " |")


def test_answers_of_the_base_and_an_adapter_sit_side_by_side():
    def answer(model: str, task: str, id_: str, said: str, score: float) -> dict:
        return {"key": f"answer/{model}/{task}/{id_}", "kind": "answer", "task": task,
                "id": id_, "gold": "walking", "answer": said, "metric": "accuracy",
                "score": score, "prompt_tokens": 300, "latency_s": 0.5, "model": model}

    base = [answer("base", "activity", "a1", "sitting", 0.0),
            answer("base", "occupancy", "o1", "walking", 1.0)]
    page, md = build(base, {"suite": "demo"})
    assert "| activity | walking | sitting |" in md and "base answer" not in md
    adapted = [answer("iot-tasks", "occupancy", "o1", "walking", 1.0),
               answer("iot-tasks", "activity", "a1", "walking", 1.0)]
    page, md = build(base + adapted, {"suite": "demo"})
    assert "base vs iot-tasks" in md and "| iot-tasks answer | iot-tasks score |" in md
    # one line per question, the adapter's answer beside the base's, and the totals
    assert "| activity | walking | sitting | 0 | walking | 1 | 300 |" in md.replace(".0 |", " |")
    assert "| all | – | – | 1 | – | 2 |" in md.replace(".0 |", " |")
    assert "LoRA adapter <code>iot-tasks</code>" in page


def test_report_renders_in_headless_chromium(tmp_path):
    html, md = write_report(sample_rows(), tmp_path, {"suite": "test", "model": "m"})
    shot = render(html, tmp_path / "report.png", height=1800)
    assert shot.errors == ()
    assert non_blank_fraction(shot.png) > 0.05
    assert md.read_text().startswith("# ")


def test_the_console_check_catches_a_broken_page(tmp_path):
    """The render check is only worth something if it can fail."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><p>x</p><script>console.error('boom'); undefinedFn();</script>"
                   "</body></html>")
    shot = render(bad, tmp_path / "bad.png", height=300)
    assert any("boom" in e for e in shot.errors)
    assert any("undefinedFn" in e for e in shot.errors)
    blank = tmp_path / "blank.html"
    blank.write_text("<html><body></body></html>")
    assert non_blank_fraction(render(blank, tmp_path / "blank.png", height=300).png) < 0.01


def test_store_resumes_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "r.jsonl"
    s = ResultStore(path)
    s.add({"key": "a", "kind": "variant", "x": 1})
    s.add({"key": "b", "kind": "task", "x": 2})
    with open(path, "a") as f:
        f.write('{"key": "c", "kind": "ta')  # killed mid-write
    again = ResultStore(path)
    assert len(again) == 2 and "a" in again and "c" not in again
    again.add({"key": "c", "kind": "task", "x": 3})
    lines = path.read_text().splitlines()
    assert [json.loads(x)["key"] for x in lines] == ["a", "b", "c"]
    assert [r["key"] for r in again.rows("task")] == ["b", "c"]
    with pytest.raises(ValueError):
        again.add({"kind": "x"})


def test_energy_falls_back_to_the_cost_model_and_says_so():
    meter = EnergyMeter()
    with meter:
        sum(range(1000))
    if meter.available:
        assert meter.joules is not None and meter.joules >= 0
    else:
        assert meter.joules is None
    assert per_token(None, 10, 0.3).source == "model"
    assert per_token(5.0, 10, 0.3).joules == pytest.approx(0.5)
    assert per_token(5.0, 10, 0.3).source == "rapl"
    assert per_token(None, 10, None) is None


def test_report_leaves_its_rows_alone_and_refuses_a_row_it_cannot_read():
    rows = sample_rows()
    before = json.dumps(rows, sort_keys=True)
    build(rows, {"suite": "test"})
    assert json.dumps(rows, sort_keys=True) == before
    from edgeweave.errors import ConfigError

    with pytest.raises(ConfigError, match="variant/x.*results.jsonl"):
        build([{"key": "variant/x", "kind": "variant", "size_mb": 1.0}], {})
