"""The CLI is a thin wrapper: user errors print one line with the fix, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgeweave.cli.app import main


@pytest.mark.parametrize("argv,needle", [
    (["generate", ""], "the prompt is empty"),
    (["generate", "hi", "--model", "no-such-model"], "Available bundled models"),
    (["generate", "hi", "--max-tokens", "0"], "max_tokens must be > 0"),
    (["bench", "--suite", "nope"], "unknown suite 'nope'"),
    (["serve", "--batch-invariant", "--backend", "torch"], "mode of the onnx backend"),
    (["serve", "--batch-invariant", "--draft", "int8"], "drop one of them"),
    (["node", "--batch-invariant", "--backend", "torch"], "mode of the onnx backend"),
])
def test_user_errors_exit_2_with_the_fix(argv, needle, capsys, tmp_home):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_every_verb_is_registered():
    out = subprocess.run([sys.executable, "-m", "edgeweave.cli.app", "--help"], capture_output=True,
                         text=True, check=False)
    for verb in ("demo", "models", "generate", "compress", "eval", "profile", "plan", "node",
                 "serve", "finetune", "federate", "bench", "certs", "tasks"):
        assert f" {verb} " in out.stdout, verb


def test_import_stays_light():
    code = ("import sys, edgeweave, edgeweave.types, edgeweave.errors; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
