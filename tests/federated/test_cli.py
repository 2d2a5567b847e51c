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
