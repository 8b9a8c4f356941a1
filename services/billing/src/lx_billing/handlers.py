"""Billing's projection of usage.incremented and delivery.outcome."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import Sequence

from lx_platform.consumer import Consumed
from lx_schemas import events as ev
from lx_schemas.envelope import derived_id
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_billing import domain, store


async def project(conn: AsyncConnection, batch: Sequence[Consumed]) -> None:
    usage: Counter[tuple[uuid.UUID, dt.date, str]] = Counter()
    bookings: list[domain.Booking] = []
    for item in batch:
        event = item.event
        if isinstance(event, ev.UsageIncremented):
            key = (event.account_id, domain.month_of(event.occurred_at), event.payload.metric.value)
            usage[key] += event.payload.quantity
        elif isinstance(event, ev.LeadSold):
            p = event.payload
            bookings.append(
                domain.Booking(
                    txn_id=derived_id("ledger.sale", p.lead_id),
                    account_id=event.account_id,
                    kind="lead_sale",
                    lead_id=p.lead_id,
                    buyer_id=p.buyer_id,
                    amount=p.price,
                    occurred_at=event.occurred_at,
                    source_event_id=event.event_id,
                    entries=tuple(domain.sale_entries(event.account_id, p.buyer_id, p.price)),
                )
            )
    await store.book(conn, bookings)
    await store.add_usage(conn, dict(usage))
