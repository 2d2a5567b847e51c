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
    assert main(["eval", "--artifact", str(out), "--tokens", "512", "--no-questions",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ppl_wikipedia"] > 1 and result["ppl_shakespeare"] > 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["ppl_wikipedia"] == pytest.approx(result["ppl_wikipedia"])


def test_cli_errors_are_clear(tiny_lm, tmp_path, capsys) -> None:
    assert main(["compress", "--model", str(tiny_lm.folder), "--recipe", "int5",
                 "--out", str(tmp_path / "x")]) == 2
    assert "unknown recipe 'int5'" in capsys.readouterr().err
    assert main(["eval", "--tokens", "512"]) == 2
    assert "exactly one of --model" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_lm.folder), "--demos", "all"]) == 2
