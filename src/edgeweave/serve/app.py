"""FastAPI app: the OpenAI-compatible edge of edgeweave.

``create_app(backend, config)`` wires a :class:`SessionFactory` (one engine per request) to
the HTTP API. Generation runs on the single round-robin scheduler thread; handlers only
validate, tokenize, submit, and relay the scheduler's events as JSON or server-sent events.
The handlers live in ``serve.routes`` (one router per endpoint family) and share one
:class:`~edgeweave.serve.state.AppState`; this module only wires them.

Every failure leaves in OpenAI's error shape and keeps the keep-alive connection: a user's
mistake is a 4xx naming the field, anything unexpected a 500. With API keys, everything but
``/health`` needs one (the metrics and the API description included).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from edgeweave.serve.backend import SessionFactory
from edgeweave.serve.config import ServeConfig
from edgeweave.serve.exception_handlers import add_exception_handlers
from edgeweave.serve.middleware import CatchCrashes, CountRequests, LimitBody
from edgeweave.serve.routes.docs import docs_router
from edgeweave.serve.routes.embeddings import embeddings_router
from edgeweave.serve.routes.generation import generation_router, prompt_param
from edgeweave.serve.routes.health import health_router, metrics_router
from edgeweave.serve.routes.keys import ApiKeys
from edgeweave.serve.routes.models import models_router
from edgeweave.serve.state import AppState, max_token_chars

# prompt_param and max_token_chars were defined here before the handlers moved to routes/
__all__ = ["create_app", "max_token_chars", "prompt_param"]


def create_app(backend: SessionFactory, config: ServeConfig | None = None) -> FastAPI:
    """An app serving ``backend``; the scheduler thread lives as long as the app runs."""
    cfg = config or ServeConfig()
    state = AppState(backend, cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start()
        try:
            yield
        finally:
            state.stop()

    # the API description is served by docs_router, behind the key like the API it describes
    app = FastAPI(title="edgeweave", version="0.1.0", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.config = cfg  # fleet_api's key check reads it
    app.state.backend = backend
    app.state.metrics = state.metrics

    add_exception_handlers(app)
    # outermost first: count every answer, then turn crashes into 500s, then cap the body
    app.add_middleware(LimitBody, max_bytes=cfg.max_body_bytes)
    app.add_middleware(CatchCrashes)
    app.add_middleware(CountRequests, counter=state.metrics.requests)

    keys = ApiKeys(cfg.api_keys)
    app.include_router(health_router(state))  # public: what a load balancer polls
    app.include_router(metrics_router(state, keys))
    app.include_router(docs_router(keys))
    app.include_router(models_router(state, keys))
    app.include_router(embeddings_router(state, keys))
    app.include_router(generation_router(state, keys))
    return app
