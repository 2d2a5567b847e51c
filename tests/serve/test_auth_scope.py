"""With API keys, only /health is public; keys can come from the environment or a file;
methods a route does not take are 405 with an ``Allow`` header."""

from __future__ import annotations

import socket

import httpx
import pytest

from edgeweave.cli.app import main
from edgeweave.errors import ConfigError
from edgeweave.serve.config import ServeConfig, read_api_key_file
from edgeweave.serve.server import BackgroundServer
from tests.serve.conftest import API_KEY
from tests.serve.keepalive import assert_openai_error, local_port

KEY = {"Authorization": f"Bearer {API_KEY}"}
DESCRIBED = ("/metrics", "/docs", "/redoc", "/openapi.json")


@pytest.mark.parametrize("path", DESCRIBED)
def test_metrics_and_the_api_description_need_the_key(server, path):
    with httpx.Client(base_url=server, timeout=60) as c:
        r = c.get(path)
        err = assert_openai_error(r, 401)
        assert err["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
        assert_openai_error(c.get(path, headers={"Authorization": "Bearer sk-wrong"}), 401)
        ok = c.get(path, headers=KEY)
        assert ok.status_code == 200 and local_port(ok) == local_port(r)
    if path == "/openapi.json":
        assert "/v1/chat/completions" in ok.json()["paths"]
    if path == "/metrics":
        assert "edgeweave_http_requests_total" in ok.text


def test_health_stays_public(server):
    h = httpx.get(f"{server}/health")
    assert h.status_code == 200 and h.json()["status"] == "ok"


def test_without_keys_everything_is_open(tiny_sessions):
    with BackgroundServer(tiny_sessions, ServeConfig()) as url:
        for path in DESCRIBED:
            assert httpx.get(f"{url}{path}").status_code == 200, path


@pytest.mark.parametrize(("path", "allow"), [
    ("/v1/chat/completions", "POST"), ("/v1/completions", "POST"), ("/v1/models", "GET"),
    ("/v1/models/tiny-llama", "GET"),
])
@pytest.mark.parametrize("method", ["OPTIONS", "HEAD"])
def test_options_and_head_are_405_with_allow(server, path, allow, method):
    with httpx.Client(base_url=server, timeout=60, headers=KEY) as c:
        r = c.request(method, path)
        assert r.status_code == 405 and r.headers["allow"] == allow
        if method == "OPTIONS":  # HEAD answers carry no body
            err = assert_openai_error(r, 405)
            assert err["code"] == "method_not_allowed" and allow in err["message"]
        ok = c.get("/v1/models")
        assert ok.status_code == 200 and local_port(ok) == local_port(r)


# ---- where the key comes from ------------------------------------------------------------
NO_KEY_WARNING = "without --api-key"


@pytest.fixture
def taken_port():
    """A port some other process listens on: serve warns, then stops at its bind check
    before loading any model."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture
def off_loopback(taken_port):
    return ["serve", "--host", "0.0.0.0", "--port", str(taken_port)]


def test_without_any_key_serving_off_loopback_warns(monkeypatch, capsys, off_loopback):
    monkeypatch.delenv("EDGEWEAVE_API_KEY", raising=False)
    assert main(off_loopback) == 2
    assert NO_KEY_WARNING in capsys.readouterr().err


def test_the_key_can_come_from_the_environment(monkeypatch, capsys, off_loopback):
    monkeypatch.setenv("EDGEWEAVE_API_KEY", "sk-from-env")
    assert main(off_loopback) == 2
    err = capsys.readouterr().err
    assert NO_KEY_WARNING not in err and "taken" in err
    assert main(["serve", "--help"]) == 0
    assert "EDGEWEAVE_API_KEY" in capsys.readouterr().out


def test_the_key_can_come_from_a_file(tmp_path, monkeypatch, capsys, off_loopback):
    monkeypatch.delenv("EDGEWEAVE_API_KEY", raising=False)
    f = tmp_path / "keys"
    f.write_text("# the fleet's keys\nsk-one\n\n  sk-two  \n")
    assert read_api_key_file(f) == ("sk-one", "sk-two")
    assert main([*off_loopback, "--api-key-file", str(f)]) == 2
    err = capsys.readouterr().err
    assert NO_KEY_WARNING not in err and "taken" in err


@pytest.mark.parametrize("content", [None, "", "\n  \n# only a comment\n"],
                         ids=["missing", "empty", "blank"])
def test_a_missing_or_empty_key_file_is_one_line_and_exit_2(tmp_path, capsys, content):
    f = tmp_path / "keys"
    if content is not None:
        f.write_text(content)
    with pytest.raises(ConfigError):
        read_api_key_file(f)
    assert main(["serve", "--api-key-file", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(f) in err and "one key per line" in err
