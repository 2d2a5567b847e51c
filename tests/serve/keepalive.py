"""Helpers to prove an error left the keep-alive connection usable: one ``httpx.Client``
sends every request, and each answer tells which local port (which TCP connection) it
came over. If the server closed the connection, the pool opens a new one (a new port) or
the next request fails with ECONNRESET."""

from __future__ import annotations

import httpx

from tests.serve.conftest import API_KEY

MODEL = "tiny-llama"
KEYED = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
VALID = '{"model": "tiny-llama", "prompt": "hello", "max_tokens": 2}'


def local_port(r: httpx.Response) -> int:
    return r.extensions["network_stream"].get_extra_info("client_addr")[1]


def post_json_text(c: httpx.Client, path: str, text: str) -> httpx.Response:
    """POST ``text`` as written: JSON escapes such as ``\\ud800`` reach the server as is."""
    return c.post(path, content=text.encode(), headers=KEYED)


def assert_openai_error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err


def assert_still_connected(c: httpx.Client, after: httpx.Response) -> None:
    """A valid request on the same client answers 200 over the same TCP connection."""
    ok = post_json_text(c, "/v1/completions", VALID)
    assert ok.status_code == 200, ok.text
    assert local_port(ok) == local_port(after), "the server closed the connection"
