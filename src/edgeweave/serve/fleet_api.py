"""``GET /v1/fleet``: the members of a discovered fleet, their measurements, the live plan
and its predicted cost (:meth:`~edgeweave.control.assemble.FleetAssembler.status`).

A router added beside the app's own (``server`` includes a deployment's routers), behind
the same API keys as ``/v1``: it lists the nodes' addresses.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request

from edgeweave.serve.errors import unauthorized

if TYPE_CHECKING:
    from edgeweave.control.assemble import FleetAssembler


async def _check_key(request: Request) -> None:
    keys = request.app.state.config.api_keys
    if not keys:
        return
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not any(
            hmac.compare_digest(key.strip().encode(), k.encode()) for k in keys):
        raise unauthorized("missing or invalid API key: send 'Authorization: Bearer <key>'")


def fleet_router(assembler: FleetAssembler) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(_check_key)])

    @router.get("/fleet")
    def fleet() -> dict[str, Any]:  # sync: status() may wait for a plan switch to finish
        return assembler.status()

    return router
