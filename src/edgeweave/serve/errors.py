"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` with a status."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi.responses import JSONResponse

from edgeweave.errors import EdgeweaveError, PlanningError, RuntimeStageError

# Our errors are the client's to fix (400) unless the fleet itself is failing: no stage can
# run the request right now (503, retry later). Looked up along the exception's MRO.
STATUS_OF: dict[type[BaseException], tuple[int, str, str | None]] = {
    EdgeweaveError: (400, "invalid_request_error", None),
    RuntimeStageError: (503, "server_error", "stage_unavailable"),
    PlanningError: (503, "server_error", "no_feasible_plan"),
}


class APIError(Exception):
    """An error the HTTP layer turns into an OpenAI error body."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        # a message may quote the request (a model name, an exception's text): a lone
        # surrogate in it would make the JSON encoder fail while answering the error
        self.status, self.message, self.type, self.param, self.code = (
            status, _printable(message), type_, None if param is None else _printable(param),
            code)
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        headers = dict(self.headers)
        if self.status == 401:
            headers.setdefault("WWW-Authenticate", "Bearer")
        return JSONResponse(self.body(), status_code=self.status, headers=headers or None)


def _printable(text: str) -> str:
    """``text`` with anything UTF-8 cannot encode (lone surrogates) written as an escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def unauthorized(message: str) -> APIError:
    return APIError(401, message, "invalid_request_error", None, "invalid_api_key")


def rate_limited(message: str) -> APIError:
    return APIError(429, message, "rate_limit_error", None, "rate_limit_exceeded")


def model_not_found(model: str, served: str | Sequence[str], *more: str) -> APIError:
    names = ([served] if isinstance(served, str) else list(served)) + list(more)
    return APIError(404, f"the model {model!r} does not exist here: this server serves "
                         f"{', '.join(repr(n) for n in names)} (see GET /v1/models)",
                    "invalid_request_error", "model", "model_not_found")


def server_error(message: str) -> APIError:
    return APIError(500, message, "server_error", None, None)


def from_exception(e: BaseException | None) -> APIError:
    """The API error for an exception raised while serving a request."""
    if isinstance(e, APIError):
        return e
    for cls in type(e).__mro__:
        if cls in STATUS_OF:
            status, type_, code = STATUS_OF[cls]
            return APIError(status, str(e), type_, None, code)
    return server_error(f"generation failed: {type(e).__name__}: {e}")
