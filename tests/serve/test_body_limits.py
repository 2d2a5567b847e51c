"""Oversized bodies get 413 before they are read, over-long prompts 400 before they are
tokenized, and neither stalls other clients or closes the keep-alive connection."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h11
import httpx
import pytest

from edgeweave.cli.app import main
from edgeweave.errors import ConfigError
from edgeweave.models.checkpoint import load_folder
from edgeweave.models.tokenizer import Tokenizer
from edgeweave.serve.app import max_token_chars
from edgeweave.serve.backend import LocalSessions
from edgeweave.serve.config import ServeConfig
from edgeweave.serve.server import BackgroundServer
from tests.conftest import make_cfg, random_model, save_folder
from tests.serve.keepalive import assert_openai_error, assert_still_connected, local_port

MiB = 1 << 20
HEAD = b'{"model": "tiny-llama", "max_tokens": 2, "prompt": "'


class CountingTokenizer(Tokenizer):
    """The real tokenizer, counting how often the server asked it to encode."""

    calls = 0

    def encode(self, text, add_special_tokens=False):  # type: ignore[no-untyped-def]
        type(self).calls += 1
        return super().encode(text, add_special_tokens)


@pytest.fixture(scope="module")
def counted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, LocalSessions]]:
    folder: Path = save_folder(random_model(make_cfg()), tmp_path_factory.mktemp("b") / "tiny-llama")
    sessions = LocalSessions.from_loaded(load_folder(folder))
    sessions.tokenizer = CountingTokenizer(folder)
    cfg = ServeConfig(max_prompt_tokens=64, max_tokens_limit=8, default_max_tokens=2)
    assert cfg.max_body_bytes == MiB  # the default these tests are written against
    with BackgroundServer(sessions, cfg) as url:
        yield url, sessions


@pytest.fixture
def url(counted: tuple[str, LocalSessions]) -> str:
    return counted[0]


# ---- 413 before reading, on a raw socket so the test controls how much is sent ----------
class RawClient:
    """One TCP connection spoken with h11: the test decides when each byte goes out."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.conn = h11.Connection(h11.CLIENT)

    def send(self, *events: object) -> None:
        for ev in events:
            self.sock.sendall(self.conn.send(ev))  # type: ignore[arg-type]

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """The next whole response; a server still waiting for the body times out here."""
        status, headers, body = 0, {}, b""
        while True:
            ev = self.conn.next_event()
            if ev is h11.NEED_DATA:
                self.conn.receive_data(self.sock.recv(65536))
            elif isinstance(ev, h11.Response):
                status = ev.status_code
                headers = {k.decode(): v.decode() for k, v in ev.headers}
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                return status, headers, body

    def close(self) -> None:
        self.sock.close()


def post(target: str, headers: list[tuple[str, str]]) -> h11.Request:
    return h11.Request(method="POST", target=target,
                       headers=[("Host", "127.0.0.1"), ("Content-Type", "application/json"),
                                *headers])


def health() -> h11.Request:
    return h11.Request(method="GET", target="/health", headers=[("Host", "127.0.0.1")])


def assert_413(status: int, body: bytes) -> None:
    assert status == 413, body
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == "request_too_large" and f"limit of {MiB} bytes" in err["message"]


def test_a_declared_oversized_body_is_413_before_a_byte_of_it_is_read(url):
    raw = RawClient(url)
    try:
        size = 20_000_000
        raw.send(post("/v1/completions", [("Content-Length", str(size))]), h11.Data(data=HEAD))
        status, _, body = raw.response()  # the other 20 MB are not sent yet
        assert_413(status, body)
        raw.send(h11.Data(data=b"x" * (size - len(HEAD))), h11.EndOfMessage())
        raw.conn.start_next_cycle()  # the same connection carries the next request
        raw.send(health(), h11.EndOfMessage())
        assert raw.response()[0] == 200
    finally:
        raw.close()


def test_a_chunked_body_is_counted_and_refused_once_past_the_limit(url):
    raw = RawClient(url)
    try:
        raw.send(post("/v1/completions", [("Transfer-Encoding", "chunked")]), h11.Data(data=HEAD))
        for _ in range(3):  # 1.5 MiB of prompt, and the body does not end
            raw.send(h11.Data(data=b"hello " * (MiB // 12)))
        status, _, body = raw.response()
        assert_413(status, body)
        raw.send(h11.Data(data=b'"}'), h11.EndOfMessage())
        raw.conn.start_next_cycle()
        raw.send(health(), h11.EndOfMessage())
        assert raw.response()[0] == 200
    finally:
        raw.close()


# ---- other clients are served while a big upload is in flight ---------------------------
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_health_answers_while_a_big_upload_is_in_flight_and_the_upload_gets_413(url, declared):
    size = 20_000_000
    halfway, go_on = threading.Event(), threading.Event()

    def body() -> Iterator[bytes]:  # a valid request: today's server tokenized all of it
        yield HEAD
        halfway.set()
        go_on.wait(60)  # the upload stays open while the test asks other questions
        chunk = b"hello " * 100_000
        rest = size - len(HEAD) - 2
        for _ in range(rest // len(chunk)):
            yield chunk
        yield b"x" * (rest % len(chunk)) + b'"}'

    headers = {"Content-Type": "application/json"}
    if declared:  # httpx streams an iterator chunked unless told the length
        headers["Content-Length"] = str(size)
    with httpx.Client(base_url=url, timeout=120) as uploader, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(uploader.post, "/v1/completions", content=body(), headers=headers)
        try:
            assert halfway.wait(30)
            # generous timeouts: the point is that /health answers at all, not how fast
            for _ in range(3):
                h = httpx.get(f"{url}/health", timeout=30)
                assert h.status_code == 200 and h.json()["status"] == "ok"
        finally:
            go_on.set()
        r = pending.result(120)
        assert_413(r.status_code, r.content)
        assert_still_connected(uploader, r)


# ---- a prompt longer than the token cap can hold is refused by its length ---------------
def test_a_prompt_too_long_in_characters_is_400_without_tokenizing(counted):
    url, sessions = counted
    cap = 64 * max_token_chars(sessions.tokenizer)
    prompt = "hello " * (cap // 6 + 10)  # under the byte limit, over the character bound
    with httpx.Client(base_url=url, timeout=60) as c:
        for path, body, param in [
            ("/v1/completions", {"prompt": prompt}, "prompt"),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}]},
             "messages"),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}] * 65},
             "messages"),
        ]:
            before = CountingTokenizer.calls
            r = c.post(path, json={"model": "tiny-llama", "max_tokens": 2, **body})
            err = assert_openai_error(r, 400, param)
            assert err["code"] == "context_length_exceeded" and "limit of 64" in err["message"]
            assert CountingTokenizer.calls == before, "the over-long prompt was tokenized"
            assert_still_connected(c, r)


def test_the_character_bound_never_refuses_a_prompt_that_fits(counted):
    _, sessions = counted
    tok = sessions.tokenizer
    bound = max_token_chars(tok)
    # every token, alone or as the longest token repeated: chars <= tokens * bound
    for i in range(tok.vocab_size):
        assert len(tok.decode([i], skip_special_tokens=False)) < bound
    longest = max(range(tok.vocab_size), key=lambda i: len(tok.decode([i], False)))
    text = " ".join([tok.decode([longest], False)] * 64)
    assert len(text) <= 64 * bound and len(tok.encode(text)) == 64


# ---- the limit is configurable ---------------------------------------------------------
def test_the_body_limit_is_configurable(tiny_sessions, capsys):
    with BackgroundServer(tiny_sessions, ServeConfig(max_body_bytes=200)) as url, \
            httpx.Client(base_url=url, timeout=60) as c:
        small = {"model": "tiny-llama", "prompt": "hello", "max_tokens": 2}
        assert c.post("/v1/completions", json=small).status_code == 200
        r = c.post("/v1/completions", json={**small, "prompt": "hello " * 40})
        err = assert_openai_error(r, 413)
        assert "limit of 200 bytes" in err["message"]
        assert local_port(c.post("/v1/completions", json=small)) == local_port(r)
    with pytest.raises(ConfigError, match="max_body_bytes"):
        ServeConfig(max_body_bytes=0)
    assert main(["serve", "--help"]) == 0
    assert "--max-body-bytes" in capsys.readouterr().out
    assert main(["serve", "--max-body-bytes", "0", "--port", "0"]) == 2
    assert "max_body_bytes must be > 0" in capsys.readouterr().err
