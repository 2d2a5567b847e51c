"""Addresses users type: one parser, checked before any model loads."""

from __future__ import annotations

import socket

import pytest

from edgeweave.cli.app import main
from edgeweave.errors import ConfigError
from edgeweave.netaddr import check_bindable, check_host, parse_hostport, split_hostport


@pytest.mark.parametrize("spec,want", [("127.0.0.1:1883", ("127.0.0.1", 1883)),
                                       ("[::1]:80", ("::1", 80)), ("broker", ("broker", 1883))])
def test_hostport_forms(spec, want) -> None:
    assert parse_hostport(spec, 1883) == want


@pytest.mark.parametrize("spec", ["127.0.0.1:", ":80", "h:99999", "h:x", "a:b:c", "[::1", ""])
def test_bad_hostport_is_one_config_error(spec) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT|not in"):
        parse_hostport(spec, flag="--mqtt")


@pytest.mark.parametrize("spec,want", [
    ("h:80", ("h", "80")), ("[::1]:0", ("::1", "0")), ("h", ("h", "")), ("[::1]", ("::1", "")),
    ("h:x", ("h", "x")), (":80", ("", "80")), ("a:b:c", None), ("[::1]x", None), ("[::1", None)])
def test_split_hostport_keeps_the_pieces_unchecked(spec, want) -> None:
    # what parse_hostport and runtime.stage's listen check both split with
    assert split_hostport(spec) == want


def test_hosts() -> None:
    check_host("127.0.0.1")
    check_host("[::1]")
    check_host("localhost")
    for bad in ("999.1.1.1", "a..b", "-x", ""):
        with pytest.raises(ConfigError, match="not an IP address"):
            check_host(bad)


def test_a_taken_port_is_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match="taken"):
            check_bindable("127.0.0.1", port)
    check_bindable("127.0.0.1", port)  # free again


@pytest.mark.parametrize("args", [["--host", "999.1.1.1"], ["--port", "70000"]])
def test_serve_refuses_a_bad_address_before_loading(args, capsys, tmp_home) -> None:
    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:")
    assert not (tmp_home / "models").exists()  # nothing was loaded or converted


def test_serve_refuses_a_taken_port_before_loading(capsys, tmp_home) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert main(["serve", "--port", str(s.getsockname()[1])]) == 2
    assert "taken" in capsys.readouterr().err
    assert not (tmp_home / "models").exists()
