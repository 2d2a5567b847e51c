"""`edgeweave serve` parses its options and reports user errors without a traceback."""

from __future__ import annotations

from edgeweave.cli.app import main


def test_serve_help_lists_the_options(capsys):
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    for opt in ("--api-key", "--max-concurrent", "--plan", "--node", "--mqtt", "--fleet-file",
                "--prefix-cache-mb"):
        assert opt in out


def test_serve_option_errors_exit_2_with_the_fix(capsys):
    assert main(["serve", "--node", "a=127.0.0.1:1", "--port", "0"]) == 2
    assert "need --plan or --fleet-file" in capsys.readouterr().err
    assert main(["serve", "--port", "70000"]) == 2
    assert "port 70000" in capsys.readouterr().err
    assert main(["serve", "--prefix-cache-mb", "-1", "--port", "0"]) == 2
    assert "--prefix-cache-mb" in capsys.readouterr().err
