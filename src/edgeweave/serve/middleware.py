"""Plain ASGI middleware of the server: request counting, a body-size limit, a crash guard.

All three are plain ASGI (no response buffering), so server-sent event streams pass through
untouched.
"""

from __future__ import annotations

import logging
from typing import Any

from edgeweave.serve.errors import APIError, server_error

log = logging.getLogger("edgeweave.serve")

KNOWN_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/models", "/health",
                         "/metrics"})


class CountRequests:
    """Counts every answered request by path and status (unknown paths as ``other``)."""

    def __init__(self, app: Any, counter: Any) -> None:
        self.app, self.counter = app, counter

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # no response at all: the client left first (CatchCrashes answers every exception)
        status = [499]

        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
            self.counter.labels(path, str(status[0])).inc()


class CatchCrashes:
    """Any exception that escapes a handler becomes a 500 in OpenAI's shape, and stays here.

    Starlette's own last-resort handler answers too, but then re-raises so the server can log
    it, and uvicorn closes the keep-alive connection on any exception: the client's next
    request on that connection got ECONNRESET. We log the traceback ourselves instead.
    Once a response has started (a stream), nothing can be answered any more: re-raise, and
    the connection has to go, since the client cannot tell where the body ended.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_started(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_started)
        except Exception as e:
            if started:
                raise
            log.exception("unexpected error serving %s %s", scope.get("method"), scope["path"])
            await server_error(f"internal error: {type(e).__name__}: {e}").response()(
                scope, receive, send)


def body_too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than this server's limit of {limit} "
                         "bytes: send a shorter prompt (the limit is set with --max-body-bytes)",
                    "invalid_request_error", None, "request_too_large")


class LimitBody:
    """Refuses request bodies above ``max_bytes`` with 413, before reading them.

    A declared ``Content-Length`` above the limit is refused without reading a byte; a body
    without one (chunked) is counted as it arrives and refused as soon as it passes the
    limit. Either way uvicorn discards the rest of the upload and keeps the connection. A body
    within the limit is buffered here (the app reads it whole anyway) and handed on as one
    message; later ``receive`` calls (disconnect polling) go to the server.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await body_too_large(self.max_bytes).response()(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending it all
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await body_too_large(self.max_bytes).response()(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        whole: dict[str, Any] | None = {"type": "http.request", "body": b"".join(chunks),
                                        "more_body": False}

        async def replay() -> Any:
            nonlocal whole
            if whole is not None:
                message, whole = whole, None
                return message
            return await receive()

        await self.app(scope, replay, send)
