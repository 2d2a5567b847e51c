"""The API description (``/openapi.json``) and its two viewers, behind the keys like the
API they describe (the app turns FastAPI's own unkeyed ones off)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from edgeweave.serve.routes.keys import ApiKeys


def docs_router(keys: ApiKeys) -> APIRouter:
    router = APIRouter(dependencies=[Depends(keys)], include_in_schema=False)

    @router.get("/openapi.json")
    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(request.app.openapi())

    @router.get("/docs")
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="edgeweave API")

    @router.get("/redoc")
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title="edgeweave API")

    return router
