"""The lead trace: a read model of every lead event plus delivery's request log."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends
from lx_platform.consumer import Consumed
from lx_platform.http import operator_guard
from lx_platform.logging import get_logger
from lx_schemas import events as ev
from lx_schemas.envelope import Event, Frozen
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_admin import store
from lx_admin.api import Rt, _not_found

log = get_logger(__name__)
router = APIRouter(prefix="/v1", dependencies=[Depends(operator_guard())], tags=["trace"])


def trace_payload(event: Event) -> dict[str, Any]:
    """What the trace keeps of an event: everything but the sealed PII ciphertext."""
    payload = event.payload
    if isinstance(payload, ev.LeadReceivedPayload | ev.LeadRoutedPayload):
        data: dict[str, Any] = payload.model_dump(mode="json", exclude={"lead"})
        data["fields"] = payload.lead.fields
        data["pii_fields"] = list(payload.lead.pii.field_names) if payload.lead.pii else []
        return data
    result: dict[str, Any] = payload.model_dump(mode="json")
    return result


async def record_trace(conn: AsyncConnection, batch: Sequence[Consumed]) -> None:
    await store.record_lead_events(
        conn,
        [
            {
                "event_id": c.event.event_id,
                "lead_id": c.event.correlation_id,
                "account_id": c.event.account_id,
                "type": c.event.type,
                "occurred_at": c.event.occurred_at,
                "topic": c.topic,
                "offset": c.offset,
                "payload": trace_payload(c.event),
            }
            for c in batch
        ],
    )


def lead_status(types: list[str]) -> str:
    if "LeadSold" in types:
        return "sold"
    if "LeadUnsold" in types:
        return "unsold"
    if set(types) == {"LeadReceived"}:
        return "received"  # not routed yet
    return "in_progress" if types else "unknown"


class TraceEvent(Frozen):
    event_id: uuid.UUID
    type: str
    occurred_at: Any
    topic: str
    offset: int
    payload: dict[str, Any]


class LeadTrace(Frozen):
    lead_id: uuid.UUID
    status: Annotated[str, "received, in_progress, sold, unsold"]
    events: list[TraceEvent]
    deliveries: list[dict[str, Any]]
    deliveries_error: str | None = None


@router.get(
    "/leads/{lead_id}/trace",
    response_model=LeadTrace,
    responses={404: {"description": "no such lead"}},
)
async def get_trace(lead_id: uuid.UUID, rt: Rt) -> LeadTrace:
    """A lead's whole story: received, routed, every attempt with request and response,
    the outcome."""
    async with rt.db.begin() as conn:
        rows = await store.lead_events(conn, lead_id)
    if not rows:
        raise _not_found("lead")
    deliveries: list[dict[str, Any]] = []
    error = None
    url = f"{rt.settings.platform.delivery_url}/internal/v1/leads/{lead_id}/deliveries"
    try:
        response = await rt.internal_client().get(url)
        response.raise_for_status()
        deliveries = response.json()["deliveries"]
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        error = f"delivery log unavailable: {exc!r}"
        log.warning("trace_deliveries_unavailable", lead_id=str(lead_id), error=repr(exc))
    return LeadTrace(
        lead_id=lead_id,
        status=lead_status([r["type"] for r in rows]),
        events=[TraceEvent(**{k: v for k, v in r.items() if k != "account_id"}) for r in rows],
        deliveries=deliveries,
        deliveries_error=error,
    )
