"""``/v1/models``: the model, its LoRA adapters (listed with ``parent`` = the base, as vLLM
lists them) and the embedding model when there is one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from edgeweave.serve.embeddings import Embedder
from edgeweave.serve.errors import model_not_found
from edgeweave.serve.routes.keys import ApiKeys
from edgeweave.serve.state import AppState


def model_entry(state: AppState, name: str) -> dict[str, Any]:
    runtime = state.runtime()
    entry = {"id": name, "object": "model", "created": state.started, "owned_by": "edgeweave",
             "root": state.model_id, "parent": None, "max_model_len": state.backend.max_len,
             "edgeweave": runtime}
    if name in state.adapters:
        adapter = state.adapters[name]
        entry.update(root=str(adapter.folder), parent=state.model_id,
                     edgeweave={**state.runtime(), "adapter": adapter.info()})
    return entry


def embedding_entry(state: AppState, e: Embedder) -> dict[str, Any]:
    return {"id": e.name, "object": "model", "created": state.started, "owned_by": "edgeweave",
            "edgeweave": {"kind": "embedding", "dimensions": e.dimensions, "loaded": e.loaded}}


def models_router(state: AppState, keys: ApiKeys) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(keys)])

    @router.get("/models")
    async def models() -> dict[str, Any]:
        embedder = state.embedder
        data = [model_entry(state, n) for n in state.generative] + (
            [embedding_entry(state, embedder)] if embedder else [])
        return {"object": "list", "data": data}

    @router.get("/models/{name:path}")
    async def model(name: str) -> dict[str, Any]:
        if state.embedder is not None and name == state.embedder.name:
            return embedding_entry(state, state.embedder)
        if name not in state.generative:
            raise model_not_found(name, state.served)
        return model_entry(state, name)

    return router
