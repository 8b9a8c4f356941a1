"""Delivery's consumer: routing decisions become durable delivery jobs."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from lx_platform.consumer import Consumed
from lx_platform.outbox import Outbox
from lx_schemas import events as ev
from lx_schemas.envelope import Event, derived_id
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_delivery import store


class DeliveryHandler:
    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    async def __call__(self, conn: AsyncConnection, batch: Sequence[Consumed]) -> None:
        offers: list[tuple[uuid.UUID, ev.LeadRoutedPayload]] = []
        staged: list[tuple[Event, uuid.UUID]] = []
        for item in batch:
            event = item.event
            if isinstance(event, ev.BuyerConfigured):
                await store.upsert_buyer(conn, event.payload)
            elif isinstance(event, ev.LeadRouted):
                offers.append((event.account_id, event.payload))
            elif isinstance(event, ev.LeadRoutingExhausted):
                p = event.payload
                # Sold before (multi-sell): the lead's outcome is its sale, not this.
                if p.sales == 0 and await store.decide_outcome(conn, p.lead_id, "unsold"):
                    unsold = ev.LeadUnsold.new(
                        event_id=derived_id("lead.unsold", p.lead_id),
                        account_id=event.account_id,
                        correlation_id=p.lead_id,
                        causation_id=event.event_id,
                        producer="delivery",
                        payload=ev.LeadUnsoldPayload(
                            lead_id=p.lead_id,
                            campaign_id=p.campaign_id,
                            source_id=p.source_id,
                            reason=p.reason,
                            rejections=p.rejections,
                        ),
                    )
                    staged.append((unsold, p.lead_id))
        await store.insert_deliveries(conn, offers)
        await self.outbox.stage_many(conn, staged)  # type: ignore[arg-type]
