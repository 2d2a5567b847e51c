"""``edgeweave compress`` / ``edgeweave eval`` on a tiny model folder."""

from __future__ import annotations

import json

import pytest

from edgeweave.cli.app import main


def test_compress_then_eval_artifact(tiny_lm, tmp_path, capsys) -> None:
    out = tmp_path / "art"
    recipe = json.dumps({"method": "rtn", "params": {"bits": 4, "group_size": 32}})
    assert main(["compress", "--model", str(tiny_lm.folder), "--recipe", recipe,
                 "--out", str(out)]) == 0
    assert "of fp16" in capsys.readouterr().out
    # the torch reference records its figures in the artifact's manifest
    assert main(["eval", "--artifact", str(out), "--tokens", "512", "--no-questions",
                 "--json", "--backend", "torch"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ppl_wikipedia"] > 1 and result["ppl_shakespeare"] > 1
    assert result["runtime"]["backend"] == "torch"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["ppl_wikipedia"] == pytest.approx(result["ppl_wikipedia"])
    # the default backend runs the artifact's ONNX graph, teacher-forced: the same numbers
    # up to the int8 activations of the fast path
    assert main(["eval", "--artifact", str(out), "--tokens", "512", "--no-questions",
                 "--json"]) == 0
    fast = json.loads(capsys.readouterr().out)
    assert fast["runtime"]["backend"] == "onnx"
    assert fast["ppl_wikipedia"] == pytest.approx(result["ppl_wikipedia"], rel=0.05)


def test_cli_errors_are_clear(tiny_lm, tmp_path, capsys) -> None:
    assert main(["compress", "--model", str(tiny_lm.folder), "--recipe", "int5",
                 "--out", str(tmp_path / "x")]) == 2
    assert "unknown recipe 'int5'" in capsys.readouterr().err
    assert main(["eval", "--tokens", "512"]) == 2
    assert "exactly one of --model" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_lm.folder), "--demos", "all"]) == 2
