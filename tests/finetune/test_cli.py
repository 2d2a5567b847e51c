"""The finetune CLI verb is a thin wrapper: one small run on a tiny model."""

from __future__ import annotations

import json

from edgeweave.cli.app import main


def test_finetune_cli_adapter_and_merge(tiny_folder, tmp_path, tmp_home):
    text = tmp_path / "notes.txt"
    text.write_text("\n\n".join("the sensor reads temperature in the kitchen and the door is "
                                "high low on off" for _ in range(30)))
    rc = main(["finetune", "--model", str(tiny_folder), "--data", str(text), "--steps", "3",
               "--seq-len", "16", "--rank", "2", "--layers", "2-4", "--subset", "loss",
               "--fraction", "0.5", "--out", str(tmp_path / "ad"),
               "--merge-out", str(tmp_path / "merged")])
    assert rc == 0
    man = json.loads((tmp_path / "ad" / "manifest.json").read_text())
    assert man["lora"]["layers"] == [2, 3] and man["metrics"]["steps"] == 3
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert main(["finetune", "--model", str(tiny_folder), "--rank", "0"]) == 2  # user error
