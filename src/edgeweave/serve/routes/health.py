"""``/health`` (public: what a load balancer polls) and ``/metrics`` (Prometheus, keyed)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from edgeweave.serve.routes.keys import ApiKeys
from edgeweave.serve.state import AppState

if TYPE_CHECKING:
    from edgeweave.runtime.coordinator import Coordinator


def plan_status(coord: Coordinator) -> dict[str, Any]:
    """Where a distributed backend's stages run now, and what failed over."""
    return {"plan": [{"device": st.device, "blocks": [st.shard.start, st.shard.end],
                      "variant": st.variant, "codec": st.codec}
                     for st in coord.plan.stages],
            "failed_devices": sorted(coord.failed),
            "failovers": int(coord.stats.get("failovers", 0))}


def health_body(state: AppState) -> dict[str, Any]:
    backend = state.backend
    out = {"status": "ok", "model": state.model_id, "active_sessions": state.active(),
           "max_concurrent": state.config.max_concurrent, **state.runtime(),
           "adapters": sorted(backend.adapters)}
    if backend.coordinator is not None:
        out.update(plan_status(backend.coordinator))
    return out


def health_router(state: AppState) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> dict[str, Any]:
        return health_body(state)

    return router


def metrics_router(state: AppState, keys: ApiKeys) -> APIRouter:
    router = APIRouter(dependencies=[Depends(keys)], include_in_schema=False)

    @router.get("/metrics")
    async def prometheus() -> Response:
        body, ctype = state.metrics.render()
        return Response(body, media_type=ctype)

    return router
