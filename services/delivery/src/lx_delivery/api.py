"""Delivery's internal API: a lead's deliveries with their requests and responses."""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request
from lx_platform.crypto import open_bytes
from lx_platform.http import internal_guard
from lx_platform.leadkeys import KeyUnavailableError, LeadKeys
from lx_platform.runtime import Runtime

from lx_delivery import store

internal = APIRouter(
    prefix="/internal/v1", dependencies=[Depends(internal_guard())], include_in_schema=False
)


async def _open(keys: LeadKeys, key_id: uuid.UUID | None, blob: bytes | None) -> Any:
    if blob is None:
        return None
    if key_id is None:
        return json.loads(blob)
    # Asked afresh, never from the cache: an operator reading a lead erased a moment ago
    # must see it shredded, not the key the worker cached before.
    keys.cache.pop(key_id, None)
    try:
        key = await keys.get(key_id)
    except KeyUnavailableError:
        return {"unavailable": "the key vault did not answer"}
    if key is None:
        return {"shredded": True}
    return json.loads(open_bytes(key, key_id, bytes(blob)))


@internal.get("/leads/{lead_id}/deliveries")
async def lead_deliveries(lead_id: uuid.UUID, request: Request) -> dict[str, Any]:
    rt: Runtime = request.app.state.runtime
    keys: LeadKeys = rt.extras["keys"]
    async with rt.db.begin() as conn:
        jobs = await store.deliveries_of_lead(conn, lead_id)
    for job in jobs:
        for t in job["tries"]:
            key_id = t.pop("key_id")
            t["request"] = await _open(keys, key_id, t.pop("request_sealed"))
            t["response"] = await _open(keys, key_id, t.pop("response_sealed"))
        job["price"] = str(job["price"])
    return {"lead_id": str(lead_id), "deliveries": json.loads(json.dumps(jobs, default=str))}
