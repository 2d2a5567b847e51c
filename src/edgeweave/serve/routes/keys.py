"""The API-key check: with keys configured, a request needs ``Authorization: Bearer <key>``."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Request

from edgeweave.serve.errors import unauthorized


@dataclass(frozen=True)
class ApiKeys:
    """A FastAPI dependency (``Depends(ApiKeys(keys))``); no keys lets every request in."""

    keys: tuple[str, ...]

    async def __call__(self, request: Request) -> None:
        if not self.keys:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise unauthorized("missing API key: send the header 'Authorization: Bearer <key>'")
        # compare_digest: the time taken says nothing about how much of a key matched
        if not any(hmac.compare_digest(key.strip().encode(), k.encode()) for k in self.keys):
            raise unauthorized("invalid API key: check the key the server was started with")
