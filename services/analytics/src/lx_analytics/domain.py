"""Analytics' pure rules: what each event adds to which hourly bucket."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal

from lx_schemas import events as ev
from lx_schemas.envelope import Event

NO_BUYER = uuid.UUID(int=0)
COUNTERS = ("received", "offered", "sold", "unsold", "rejected", "errors")
Bucket = tuple[dt.datetime, uuid.UUID, uuid.UUID, uuid.UUID]


def hour_of(at: dt.datetime) -> dt.datetime:
    return at.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def deltas(events: Iterable[Event]) -> dict[Bucket, dict[str, Decimal | int]]:
    out: dict[Bucket, dict[str, Decimal | int]] = defaultdict(
        lambda: {**dict.fromkeys(COUNTERS, 0), "revenue": Decimal("0.00")}
    )

    def add(event: Event, buyer: uuid.UUID, counter: str, amount: Decimal | int = 1) -> None:
        p = event.payload
        out[(hour_of(event.occurred_at), p.campaign_id, p.source_id, buyer)][counter] += amount

    for e in events:
        if isinstance(e, ev.LeadReceived):
            add(e, NO_BUYER, "received")
        elif isinstance(e, ev.LeadRouted):
            add(e, e.payload.buyer_id, "offered")
        elif isinstance(e, ev.DeliveryAttempted) and e.payload.final:
            if e.payload.result is ev.DeliveryResult.REJECTED:
                add(e, e.payload.buyer_id, "rejected")
            elif e.payload.result is ev.DeliveryResult.ERROR:
                add(e, e.payload.buyer_id, "errors")
        elif isinstance(e, ev.LeadSold):
            add(e, NO_BUYER, "sold")
            add(e, e.payload.buyer_id, "sold")
            add(e, e.payload.buyer_id, "revenue", e.payload.price)
        elif isinstance(e, ev.LeadUnsold):
            add(e, NO_BUYER, "unsold")
    return dict(out)
