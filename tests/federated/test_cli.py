"""The CLI verbs are thin wrappers: one small run each on a tiny model."""

from __future__ import annotations

import json

from edgeweave.cli.app import main


def test_federate_cli_simulation(tiny_folder, tmp_path, tmp_home):
    out = tmp_path / "fed.json"
    rc = main(["federate", "--model", str(tiny_folder), "--task", "pattern", "--clients", "3",
               "--rounds", "1", "--local-steps", "1", "--region", "2-4", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["rounds"][0]["replied"] == 3 and res["final_eval"]["loss"] > 0


def test_federate_cli_keeps_the_optimizer_by_default_and_fresh_on_request(tiny_folder, tmp_path,
                                                                          tmp_home):
    steps = {}
    for flag in ("", "--fresh-optimizer"):
        out = tmp_path / f"fed{flag}.json"
        rc = main(["federate", "--model", str(tiny_folder), "--task", "pattern", "--clients", "2",
                   "--rounds", "2", "--local-steps", "1", "--region", "2-4", "--out", str(out),
                   *([flag] if flag else [])])
        assert rc == 0
        last = json.loads(out.read_text())["rounds"][-1]["clients"]
        steps[flag] = {c["optimizer-steps"] for c in last}
    assert steps == {"": {2}, "--fresh-optimizer": {1}}


def test_federate_cli_refuses_logit_adjustment_on_a_task_without_labels(tiny_folder, tmp_path,
                                                                        tmp_home, capsys):
    rc = main(["federate", "--model", str(tiny_folder), "--task", "pattern", "--clients", "2",
               "--rounds", "1", "--logit-adjust", "1.0", "--out", str(tmp_path / "f.json")])
    assert rc == 2
    err = capsys.readouterr()
    assert "task='iot'" in err.err + err.out
    assert not (tmp_path / "f.json").exists()
