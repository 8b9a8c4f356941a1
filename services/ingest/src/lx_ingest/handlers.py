"""Ingest's consumers: configuration it needs, and the outcomes sources ask about."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lx_platform.consumer import Consumed
from lx_schemas import events as ev
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_ingest import store


async def handle(conn: AsyncConnection, batch: Sequence[Consumed]) -> None:
    outcomes: list[dict[str, Any]] = []
    for item in batch:
        event = item.event
        if isinstance(event, ev.CampaignConfigured):
            await store.upsert_campaign(conn, event.payload)
        elif isinstance(event, ev.SourceConfigured):
            await store.upsert_source(conn, event.payload)
        elif isinstance(event, ev.LeadSold):
            outcomes.append(
                {
                    "lead_id": event.payload.lead_id,
                    "status": "sold",
                    "at": event.occurred_at,
                    "reason": None,
                }
            )
        elif isinstance(event, ev.LeadUnsold):
            outcomes.append(
                {
                    "lead_id": event.payload.lead_id,
                    "status": "unsold",
                    "at": event.occurred_at,
                    "reason": event.payload.reason.value,
                }
            )
    await store.record_outcomes(conn, outcomes)
