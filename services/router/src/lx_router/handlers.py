"""Router's consumer: turns received leads and delivery results into offers."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from lx_platform.consumer import Consumed
from lx_platform.outbox import Outbox
from lx_schemas import events as ev
from lx_schemas.envelope import Event, derived_id
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_router import domain, store


class RouterHandler:
    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    async def __call__(self, conn: AsyncConnection, batch: Sequence[Consumed]) -> None:
        staged: list[tuple[Event, uuid.UUID]] = []
        for item in batch:
            event = item.event
            if isinstance(event, ev.BuyerConfigured):
                await store.upsert_buyer(conn, event.payload)
            elif isinstance(event, ev.LeadReceived):
                staged.extend(await self._route_new(conn, event))
            elif isinstance(event, ev.DeliveryAttempted):
                staged.extend(await self._after_attempt(conn, event))
            elif isinstance(event, ev.LeadSold):
                await store.mark_sold(conn, event.payload.lead_id)
        await self.outbox.stage_many(conn, staged)  # type: ignore[arg-type]

    async def _route_new(
        self, conn: AsyncConnection, event: ev.LeadReceived
    ) -> list[tuple[Event, uuid.UUID]]:
        p = event.payload
        plan = domain.plan_waterfall(await store.campaign_buyers(conn, p.campaign_id))
        decision = domain.first_step(plan)
        routing = store.Routing(
            p.lead_id,
            event.account_id,
            p.campaign_id,
            p.source_id,
            p.lead,
            plan,
            attempt=decision.attempt if isinstance(decision, domain.OfferNext) else 0,
            status="routing" if isinstance(decision, domain.OfferNext) else "exhausted",
        )
        if not await store.insert_routing(conn, routing):
            return []  # routed before (a replayed lead.received under a new event id)
        return [self._emit(routing, decision, cause=event)]

    async def _after_attempt(
        self, conn: AsyncConnection, event: ev.DeliveryAttempted
    ) -> list[tuple[Event, uuid.UUID]]:
        p = event.payload
        routing = await store.routing_for_update(conn, p.lead_id)
        if routing is None:
            return []
        decision = domain.after_result(
            routing.plan,
            routing.attempt,
            routing.status != "routing",
            p.attempt,
            p.result,
            p.final,
        )
        if isinstance(decision, domain.Wait):
            return []
        if isinstance(decision, domain.OfferNext):
            await store.update_routing(conn, p.lead_id, decision.attempt, "routing")
        else:
            await store.update_routing(conn, p.lead_id, routing.attempt, "exhausted")
        return [self._emit(routing, decision, cause=event)]

    def _emit(
        self, r: store.Routing, decision: domain.Decision, cause: Event
    ) -> tuple[Event, uuid.UUID]:
        common = {
            "account_id": r.account_id,
            "correlation_id": r.lead_id,
            "causation_id": cause.event_id,
            "producer": "router",
        }
        if isinstance(decision, domain.OfferNext):
            offer = decision.offer
            routed = ev.LeadRouted.new(
                event_id=derived_id("lead.routed", r.lead_id, decision.attempt),
                payload=ev.LeadRoutedPayload(
                    lead_id=r.lead_id,
                    campaign_id=r.campaign_id,
                    source_id=r.source_id,
                    buyer_id=offer.buyer_id,
                    attempt=decision.attempt,
                    delivery_id=derived_id("delivery", r.lead_id, offer.buyer_id, decision.attempt),
                    price=offer.price,
                    lead=r.lead,
                ),
                **common,
            )
            return routed, r.lead_id
        assert isinstance(decision, domain.Exhausted)
        exhausted = ev.LeadRoutingExhausted.new(
            event_id=derived_id("lead.routing_exhausted", r.lead_id),
            payload=ev.LeadRoutingExhaustedPayload(
                lead_id=r.lead_id,
                campaign_id=r.campaign_id,
                source_id=r.source_id,
                reason=decision.reason,
                attempts=decision.attempts,
            ),
            **common,
        )
        return exhausted, r.lead_id
