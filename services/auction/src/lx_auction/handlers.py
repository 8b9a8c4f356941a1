"""The auction's consumer: the configuration its auctions are run by."""

from __future__ import annotations

from collections.abc import Sequence

from lx_platform.consumer import Consumed
from lx_schemas import events as ev
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_auction import store


async def handle(conn: AsyncConnection, batch: Sequence[Consumed]) -> None:
    for item in batch:
        event = item.event
        if isinstance(event, ev.CampaignConfigured):
            await store.upsert_campaign(conn, event.payload)
        elif isinstance(event, ev.SourceConfigured):
            await store.upsert_source(conn, event.payload)
        elif isinstance(event, ev.BuyerConfigured):
            await store.upsert_buyer(conn, event.payload)
