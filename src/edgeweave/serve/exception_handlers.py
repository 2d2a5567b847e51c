"""Every failure leaves in OpenAI's error shape: our API errors as they are, a body FastAPI
refused as a 400 naming the field, our exceptions by :func:`~edgeweave.serve.errors.
from_exception`, Starlette's 404 and 405 with a code and the methods that would do."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgeweave.errors import EdgeweaveError
from edgeweave.serve.errors import APIError, bad_request, from_exception


async def api_error(_: Request, e: APIError) -> JSONResponse:
    return e.response()


async def invalid_request(_: Request, e: RequestValidationError) -> JSONResponse:
    errs = e.errors()
    first = errs[0] if errs else {}
    if first.get("type") == "json_invalid":  # its loc is the character offset, no field
        where = first.get("loc", ("body", "?"))[-1]
        return bad_request(f"the body is not valid JSON (character {where}): "
                           f"{(first.get('ctx') or {}).get('error', 'decode error')}").response()
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    msg = first.get("msg", "invalid request")
    param = (first.get("ctx") or {}).get("param")  # a model validator names its field
    if param is None:
        param = ".".join(loc) or None
        msg = f"{param or 'body'}: {msg}"
    return bad_request(msg, param).response()


async def edgeweave_error(_: Request, e: EdgeweaveError) -> JSONResponse:
    return from_exception(e).response()


async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    headers = dict(e.headers or {})
    message, code = str(e.detail), None
    if e.status_code == 404:
        code = "not_found"
    elif e.status_code == 405:
        code = "method_not_allowed"
        message = (f"{request.method} is not allowed on {request.url.path}: use "
                   f"{headers.get('Allow', 'another method')}")
    return APIError(e.status_code, message, "invalid_request_error", None, code,
                    headers).response()


def add_exception_handlers(app: FastAPI) -> None:
    app.exception_handler(APIError)(api_error)
    app.exception_handler(RequestValidationError)(invalid_request)
    app.exception_handler(EdgeweaveError)(edgeweave_error)
    app.exception_handler(StarletteHTTPException)(http_error)
