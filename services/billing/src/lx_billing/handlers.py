"""Billing's projection of usage.incremented and delivery.outcome."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import Sequence

from lx_platform.consumer import Consumed
from lx_schemas import events as ev
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
            entries = domain.sale_entries(
                event.account_id, p.buyer_id, p.price, source_id=p.source_id, payout=p.payout
            )
            bookings.append(
                domain.Booking(
                    txn_id=domain.sale_txn_id(p.lead_id, p.sale),
                    account_id=event.account_id,
                    kind="lead_sale",
                    lead_id=p.lead_id,
                    buyer_id=p.buyer_id,
                    amount=p.price,
                    occurred_at=event.occurred_at,
                    source_event_id=event.event_id,
                    entries=tuple(entries),
                )
            )
        elif isinstance(event, ev.LeadReturned):
            r = event.payload
            entries = domain.return_entries(
                event.account_id, r.buyer_id, r.price, source_id=r.source_id, payout=r.payout
            )
            bookings.append(
                domain.Booking(
                    txn_id=domain.return_txn_id(r.return_id),
                    account_id=event.account_id,
                    kind="lead_return",
                    lead_id=r.lead_id,
                    buyer_id=r.buyer_id,
                    amount=r.price,
                    occurred_at=event.occurred_at,
                    source_event_id=event.event_id,
                    entries=tuple(entries),
                )
            )
    await store.book(conn, bookings)
    await store.add_usage(conn, dict(usage))
