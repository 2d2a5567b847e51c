"""``edgeweave plan`` and ``edgeweave profile`` through the real CLI entry point."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from edgeweave.cli.app import main
from edgeweave.plan.baselines import BASELINES
from edgeweave.profile import probe

HOME = Path(__file__).resolve().parents[2] / "examples" / "fleets" / "home.yaml"


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    from edgeweave.cli.common import console

    monkeypatch.setattr(console, "width", 240)  # rich truncates table cells at 80 columns


def test_plan_prints_stages_costs_and_baselines(capsys, tmp_home) -> None:
    assert main(["plan", "--fleet", str(HOME), "--objective", "latency", "--baseline", "all",
                 "--model", str(_tiny_folder(tmp_home))]) == 0
    out = capsys.readouterr().out
    for word in ("Plan", "planner", "ms/tok", *BASELINES):  # every baseline's row
        assert word in out


def test_plan_json_and_bad_fleet(capsys, tmp_home, tmp_path) -> None:
    assert main(["plan", "--fleet", str(HOME), "--json", "--model",
                 str(_tiny_folder(tmp_home))]) == 0
    plans = json.loads(capsys.readouterr().out)
    assert plans["planner"]["stages"][0]["shard"]["start"] == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"devices": {"a": {"class": "toaster"}}}))
    assert main(["plan", "--fleet", str(bad)]) == 2
    assert "unknown device class 'toaster'" in capsys.readouterr().err


def test_profile_shows_host_and_catalog(capsys, tmp_home) -> None:
    hp = probe.HostProfile(machine=probe._machine(), cpus=2, memory_available=8 * 10**9,
                           mem_bw=2e10, gemv_bw=1e10, matmul={"fp32": 5e10},
                           op_overhead_s=5e-6, probed_at=1.0)
    from edgeweave.paths import atomic_write_json

    atomic_write_json(probe.cache_path(), asdict(hp))  # a profile measured earlier
    assert main(["profile", "--no-model"]) == 0
    out = capsys.readouterr().out
    assert "host" in out and "rpi5-8gb" in out and "cloud-a100-80gb" in out


def _tiny_folder(home: Path) -> Path:
    from tests.conftest import make_cfg, random_model, save_folder

    return save_folder(random_model(make_cfg()), home / "tiny-model")
