"""Router's tables: the configuration it routes by, each lead's walk down its plan, the
offers made with the cap buckets they reserved, and the per-buyer duplicate index."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from lx_routing import caps
from lx_schemas.events import (
    BuyerState,
    CampaignState,
    LeadContent,
    Rejection,
    SourceState,
)
from lx_schemas.rules import Cap, Margin
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_router.domain import PlannedOffer, Walk

# --- configuration --------------------------------------------------------------------------


async def upsert_buyer(conn: AsyncConnection, b: BuyerState) -> None:
    await conn.execute(
        text(
            "insert into buyers (buyer_id, campaign_id, status, price, priority, name, state)"
            " values (:id, :c, :s, :p, :pr, :n, cast(:st as jsonb))"
            " on conflict (buyer_id) do update set"
            " campaign_id = excluded.campaign_id, status = excluded.status,"
            " price = excluded.price, priority = excluded.priority, name = excluded.name,"
            " state = excluded.state"
        ),
        {
            "id": b.buyer_id,
            "c": b.campaign_id,
            "s": b.status,
            "p": b.price,
            "pr": b.priority,
            "n": b.name,
            "st": b.model_dump_json(),
        },
    )


async def upsert_campaign(conn: AsyncConnection, c: CampaignState) -> None:
    await conn.execute(
        text(
            "insert into campaigns (campaign_id, state) values (:id, cast(:st as jsonb))"
            " on conflict (campaign_id) do update set state = excluded.state"
        ),
        {"id": c.campaign_id, "st": c.model_dump_json()},
    )


async def upsert_source(conn: AsyncConnection, s: SourceState) -> None:
    await conn.execute(
        text(
            "insert into sources (source_id, campaign_id, state)"
            " values (:id, :c, cast(:st as jsonb))"
            " on conflict (source_id) do update set"
            " campaign_id = excluded.campaign_id, state = excluded.state"
        ),
        {"id": s.source_id, "c": s.campaign_id, "st": s.model_dump_json()},
    )


async def campaign_buyers(conn: AsyncConnection, campaign_id: uuid.UUID) -> list[BuyerState]:
    """The campaign's buyers as last configured (rows from before BuyerConfigured v2,
    which lack a full state, are left out until the buyer is configured again)."""
    rows = await conn.execute(
        text("select state from buyers where campaign_id = :c and state is not null"),
        {"c": campaign_id},
    )
    return [BuyerState.model_validate(r.state) for r in rows]


async def campaign(conn: AsyncConnection, campaign_id: uuid.UUID) -> CampaignState | None:
    row = (
        await conn.execute(
            text("select state from campaigns where campaign_id = :c"), {"c": campaign_id}
        )
    ).first()
    return None if row is None else CampaignState.model_validate(row.state)


async def source(conn: AsyncConnection, source_id: uuid.UUID) -> SourceState | None:
    row = (
        await conn.execute(text("select state from sources where source_id = :s"), {"s": source_id})
    ).first()
    return None if row is None else SourceState.model_validate(row.state)


async def next_round_robin(conn: AsyncConnection, campaign_id: uuid.UUID) -> int:
    """This lead's turn in its campaign's rotation (0, 1, 2... lead by lead)."""
    row = await conn.execute(
        text(
            "insert into round_robin (campaign_id, counter) values (:c, 0)"
            " on conflict (campaign_id) do update set counter = round_robin.counter + 1"
            " returning counter"
        ),
        {"c": campaign_id},
    )
    counter: int = row.scalar_one()
    return counter


# --- routings -------------------------------------------------------------------------------


@dataclass
class Routing:
    lead_id: uuid.UUID
    account_id: uuid.UUID
    campaign_id: uuid.UUID
    source_id: uuid.UUID
    lead: LeadContent
    walk: Walk
    status: str  # routing | sold | exhausted
    margin: Margin
    ping_id: uuid.UUID | None = None
    promised: Decimal | None = None


async def routing_exists(conn: AsyncConnection, lead_id: uuid.UUID) -> bool:
    row = await conn.execute(text("select 1 from routings where lead_id = :l"), {"l": lead_id})
    return row.first() is not None


def _walk_params(r: Routing) -> dict[str, Any]:
    w = r.walk
    return {
        "l": r.lead_id,
        "plan": json.dumps([o.to_json() for o in w.plan]),
        "pos": w.position,
        "att": w.attempt,
        "sales": w.sales,
        "max": w.max_sales,
        "rej": json.dumps([x.model_dump(mode="json") for x in w.rejections]),
        "st": r.status,
    }


async def insert_routing(conn: AsyncConnection, r: Routing) -> bool:
    row = await conn.execute(
        text(
            "insert into routings (lead_id, account_id, campaign_id, source_id, lead, plan,"
            " position, attempt, sales, max_sales, rejections, status, ping_id, margin, promised)"
            " values (:l, :a, :c, :s, cast(:lead as jsonb), cast(:plan as jsonb), :pos, :att,"
            " :sales, :max, cast(:rej as jsonb), :st, :ping, cast(:margin as jsonb), :prom)"
            " on conflict (lead_id) do nothing returning lead_id"
        ),
        {
            **_walk_params(r),
            "a": r.account_id,
            "c": r.campaign_id,
            "s": r.source_id,
            "lead": r.lead.model_dump_json(),
            "ping": r.ping_id,
            "margin": r.margin.model_dump_json(),
            "prom": r.promised,
        },
    )
    return row.first() is not None


async def routing_for_update(conn: AsyncConnection, lead_id: uuid.UUID) -> Routing | None:
    row = (
        await conn.execute(
            text("select * from routings where lead_id = :l for update"), {"l": lead_id}
        )
    ).first()
    if row is None:
        return None
    walk = Walk(
        plan=[PlannedOffer.from_json(o) for o in row.plan],
        position=row.position,
        attempt=row.attempt,
        sales=row.sales,
        max_sales=row.max_sales,
        rejections=[Rejection.model_validate(x) for x in row.rejections],
    )
    return Routing(
        row.lead_id,
        row.account_id,
        row.campaign_id,
        row.source_id,
        LeadContent.model_validate(row.lead),
        walk,
        row.status,
        Margin.model_validate(row.margin),
        row.ping_id,
        row.promised,
    )


async def save_routing(conn: AsyncConnection, r: Routing) -> None:
    await conn.execute(
        text(
            "update routings set plan = cast(:plan as jsonb), position = :pos, attempt = :att,"
            " sales = :sales, max_sales = :max, rejections = cast(:rej as jsonb), status = :st,"
            " updated_at = now() where lead_id = :l"
        ),
        _walk_params(r),
    )


# --- caps as reservations -------------------------------------------------------------------


@dataclass(frozen=True)
class Reservation:
    """What one offer took of one cap bucket."""

    period: str
    unit: str  # leads | usd
    bucket: dt.datetime
    amount: Decimal

    def to_json(self) -> dict[str, str]:
        return {
            "period": self.period,
            "unit": self.unit,
            "bucket": self.bucket.isoformat(),
            "amount": str(self.amount),
        }

    @classmethod
    def from_json(cls, data: dict[str, str]) -> Reservation:
        return cls(
            data["period"],
            data["unit"],
            dt.datetime.fromisoformat(data["bucket"]),
            Decimal(data["amount"]),
        )


def _unit(cap: Cap) -> str:
    return "leads" if cap.max_leads is not None else "usd"


def ordered_caps(buyer_caps: Sequence[Cap]) -> list[Cap]:
    """One global lock order for a buyer's counters, so reservations never deadlock
    against each other on one buyer."""
    return sorted(buyer_caps, key=lambda c: (c.period.value, _unit(c)))


_RESERVE = text(
    "insert into cap_counters (buyer_id, period, unit, bucket, used)"
    " select :b, :p, :u, :k, cast(:n as numeric) where cast(:n as numeric) <= cast(:max as numeric)"
    " on conflict (buyer_id, period, unit, bucket) do update"
    " set used = cap_counters.used + excluded.used"
    " where cap_counters.used + excluded.used <= cast(:max as numeric)"
    " returning used"
)


async def reserve(
    conn: AsyncConnection,
    buyer_id: uuid.UUID,
    cap: Cap,
    timezone: str,
    price: Decimal,
    now: dt.datetime,
) -> Reservation | None:
    """Take one lead (or its price) of ``cap``'s current bucket, or None if that would
    exceed it. The check is the write: the conditional update runs under the counter
    row's lock, and a concurrent router's reservation waits for this transaction and is
    then judged against what it committed (READ COMMITTED re-checks the WHERE)."""
    taken = Reservation(
        cap.period.value,
        _unit(cap),
        caps.bucket_start(cap.period, timezone, now),
        caps.amount(cap, price),
    )
    row = await conn.execute(
        _RESERVE,
        {
            "b": buyer_id,
            "p": taken.period,
            "u": taken.unit,
            "k": taken.bucket,
            "n": taken.amount,
            "max": caps.limit(cap),
        },
    )
    return taken if row.first() is not None else None


async def claim_consumer(
    conn: AsyncConnection,
    buyer_id: uuid.UUID,
    hashes: Sequence[bytes],
    lead_id: uuid.UUID,
    now: dt.datetime,
    days: int,
) -> bool:
    """Record that ``buyer_id`` is offered this consumer now; False if it was offered
    the same consumer (any of its hashes) by another lead within ``days``. Like ingest's
    duplicate index, the claim is the check: of two concurrent leads of one consumer,
    the second waits on the first's row and then finds it inside the window."""
    cutoff = now - dt.timedelta(days=days)
    for h in hashes:
        row = await conn.execute(
            text(
                "insert into buyer_consumers (buyer_id, consumer_hash, lead_id, seen_at)"
                " values (:b, :h, :l, :now)"
                " on conflict (buyer_id, consumer_hash) do update"
                " set lead_id = excluded.lead_id, seen_at = excluded.seen_at"
                " where buyer_consumers.seen_at <= :cutoff"
                " or buyer_consumers.lead_id = excluded.lead_id"
                " returning lead_id"
            ),
            {"b": buyer_id, "h": h, "l": lead_id, "now": now, "cutoff": cutoff},
        )
        if row.first() is None:
            return False
    return True


# --- offers ---------------------------------------------------------------------------------


async def insert_offer(
    conn: AsyncConnection,
    *,
    delivery_id: uuid.UUID,
    lead_id: uuid.UUID,
    buyer_id: uuid.UUID,
    attempt: int,
    sale: int,
    price: Decimal,
    reservations: Sequence[Reservation],
) -> None:
    await conn.execute(
        text(
            "insert into offers (delivery_id, lead_id, buyer_id, attempt, sale, price, status,"
            " reservations) values (:d, :l, :b, :a, :s, :p, 'pending', cast(:r as jsonb))"
        ),
        {
            "d": delivery_id,
            "l": lead_id,
            "b": buyer_id,
            "a": attempt,
            "s": sale,
            "p": price,
            "r": json.dumps([x.to_json() for x in reservations]),
        },
    )


async def accept_offer(conn: AsyncConnection, delivery_id: uuid.UUID) -> None:
    await conn.execute(
        text("update offers set status = 'accepted' where delivery_id = :d and status = 'pending'"),
        {"d": delivery_id},
    )


async def release_offer(conn: AsyncConnection, delivery_id: uuid.UUID) -> list[Reservation]:
    """Give the offer's reservations back, exactly once: only the first final refusal
    finds it pending. The buckets are the ones recorded at offer time."""
    row = (
        await conn.execute(
            text(
                "update offers set status = 'released' where delivery_id = :d"
                " and status = 'pending' returning buyer_id, reservations"
            ),
            {"d": delivery_id},
        )
    ).first()
    if row is None:
        return []
    taken = [Reservation.from_json(x) for x in row.reservations]
    for r in sorted(taken, key=lambda r: (r.period, r.unit)):
        await conn.execute(
            text(
                "update cap_counters set used = greatest(used - :n, 0) where buyer_id = :b"
                " and period = :p and unit = :u and bucket = :k"
            ),
            {"b": row.buyer_id, "p": r.period, "u": r.unit, "k": r.bucket, "n": r.amount},
        )
    return taken


async def offer_buyer(conn: AsyncConnection, delivery_id: uuid.UUID) -> uuid.UUID | None:
    row = (
        await conn.execute(
            text("select buyer_id from offers where delivery_id = :d"), {"d": delivery_id}
        )
    ).first()
    return None if row is None else row.buyer_id


async def buyer_name(conn: AsyncConnection, buyer_id: uuid.UUID) -> str:
    row = (
        await conn.execute(text("select name from buyers where buyer_id = :b"), {"b": buyer_id})
    ).first()
    return str(row.name) if row is not None and row.name else str(buyer_id)
