"""Delivery's tables: buyers, delivery jobs, their tries and final outcomes."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from lx_platform.db import pg_array
from lx_schemas.events import BuyerState, LeadContent, LeadRoutedPayload
from lx_schemas.rules import Payout
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection


async def upsert_buyer(conn: AsyncConnection, b: BuyerState) -> None:
    """The buyer's whole state (integration, breaker, sealed secrets), as configured."""
    await conn.execute(
        text(
            "insert into buyers (buyer_id, state) values (:id, cast(:s as jsonb))"
            " on conflict (buyer_id) do update set state = excluded.state"
        ),
        {"id": b.buyer_id, "s": b.model_dump_json()},
    )


async def buyers(
    conn: AsyncConnection, buyer_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, BuyerState]:
    """The states of several buyers at once (a batch of jobs); unknown ones left out."""
    rows = await conn.execute(
        text("select buyer_id, state from buyers where buyer_id = any(cast(:ids as uuid[]))"),
        {"ids": pg_array(set(buyer_ids))},
    )
    return {r.buyer_id: BuyerState.model_validate(r.state) for r in rows}


async def insert_deliveries(
    conn: AsyncConnection, offers: Sequence[tuple[uuid.UUID, LeadRoutedPayload]]
) -> None:
    if offers:
        await conn.execute(
            text(
                "insert into deliveries (delivery_id, lead_id, account_id, campaign_id, source_id,"
                " buyer_id, attempt, price, lead, price_from_response, payout, sale, ping_id,"
                " bid_ref) values (:d, :l, :a, :c, :s, :b, :att, :p, cast(:lead as jsonb),"
                " :pfr, cast(:payout as jsonb), :sale, :ping, :ref)"
                " on conflict (delivery_id) do nothing"
            ),
            [
                {
                    "d": p.delivery_id,
                    "l": p.lead_id,
                    "a": account_id,
                    "c": p.campaign_id,
                    "s": p.source_id,
                    "b": p.buyer_id,
                    "att": p.attempt,
                    "p": p.price,
                    "lead": p.lead.model_dump_json(),
                    "pfr": p.price_from_response,
                    "payout": p.payout.model_dump_json(),
                    "sale": p.sale,
                    "ping": p.ping_id,
                    "ref": p.bid_ref,
                }
                for account_id, p in offers
            ],
        )


@dataclass(frozen=True)
class Job:
    delivery_id: uuid.UUID
    lead_id: uuid.UUID
    account_id: uuid.UUID
    campaign_id: uuid.UUID
    source_id: uuid.UUID
    buyer_id: uuid.UUID
    attempt: int
    price: Decimal
    lead: LeadContent
    try_number: int
    interrupted: bool  # the previous try was cut off after it may have been sent
    price_from_response: bool
    payout: Payout
    sale: int
    ping_id: uuid.UUID | None
    bid_ref: str | None


async def claim_due(conn: AsyncConnection, limit: int, lease_s: float) -> list[Job]:
    """Lease due jobs: new ones, retries whose time has come, and expired leases."""
    rows = await conn.execute(
        text(
            "with due as (select delivery_id, status as prev from deliveries"
            "  where (status = 'pending' and next_try_at <= now())"
            "     or (status = 'sending' and lease_until < now())"
            "  order by next_try_at limit :n for update skip locked)"
            " update deliveries d set status = 'sending', tries = d.tries + 1,"
            "  lease_until = now() + make_interval(secs => :lease), updated_at = now()"
            " from due where d.delivery_id = due.delivery_id"
            " returning d.*, due.prev"
        ),
        {"n": limit, "lease": lease_s},
    )
    return [
        Job(
            r.delivery_id,
            r.lead_id,
            r.account_id,
            r.campaign_id,
            r.source_id,
            r.buyer_id,
            r.attempt,
            r.price,
            LeadContent.model_validate(r.lead),
            r.tries,
            interrupted=r.prev == "sending",
            price_from_response=r.price_from_response,
            payout=Payout.model_validate(r.payout),
            sale=r.sale,
            ping_id=r.ping_id,
            bid_ref=r.bid_ref,
        )
        for r in rows
    ]


@dataclass(frozen=True)
class TryRecord:
    try_number: int
    started_at: dt.datetime
    latency_ms: float
    result: str
    http_status: int | None
    reason: str | None
    key_id: uuid.UUID | None
    request_sealed: bytes | None
    response_sealed: bytes | None
    reason_code: str | None = None
    price: Decimal | None = None
    buyer_lead_id: str | None = None


async def record_try(conn: AsyncConnection, delivery_id: uuid.UUID, t: TryRecord) -> None:
    await conn.execute(
        text(
            "insert into delivery_tries (delivery_id, try_number, started_at, latency_ms, result,"
            " http_status, reason, key_id, request_sealed, response_sealed, reason_code, price,"
            " buyer_lead_id) values (:d, :n, :at, :lat, :res, :st, :re, :k, :rq, :rs, :code,"
            " :price, :blid) on conflict do nothing"
        ),
        {
            "d": delivery_id,
            "n": t.try_number,
            "at": t.started_at,
            "lat": t.latency_ms,
            "res": t.result,
            "st": t.http_status,
            "re": t.reason,
            "k": t.key_id,
            "rq": t.request_sealed,
            "rs": t.response_sealed,
            "code": t.reason_code,
            "price": t.price,
            "blid": t.buyer_lead_id,
        },
    )


async def finish(conn: AsyncConnection, delivery_id: uuid.UUID, result: str) -> None:
    await conn.execute(
        text(
            "update deliveries set status = 'done', result = :r, lease_until = null,"
            " updated_at = now() where delivery_id = :d"
        ),
        {"d": delivery_id, "r": result},
    )


async def reschedule(
    conn: AsyncConnection, delivery_id: uuid.UUID, after_s: float, *, count_try: bool = True
) -> None:
    await conn.execute(
        text(
            "update deliveries set status = 'pending', lease_until = null, updated_at = now(),"
            " next_try_at = now() + make_interval(secs => :s),"
            " tries = tries - case when :count then 0 else 1 end where delivery_id = :d"
        ),
        {"d": delivery_id, "s": after_s, "count": count_try},
    )


async def decide_outcome(conn: AsyncConnection, lead_id: uuid.UUID, outcome: str) -> bool:
    """Record the lead's final outcome; False if it already had one."""
    row = await conn.execute(
        text(
            "insert into lead_outcomes (lead_id, outcome) values (:l, :o)"
            " on conflict do nothing returning lead_id"
        ),
        {"l": lead_id, "o": outcome},
    )
    return row.first() is not None


async def record_sale(
    conn: AsyncConnection, lead_id: uuid.UUID, sale: int, delivery_id: uuid.UUID
) -> bool:
    """Book sale ``sale`` of the lead; False if that sale was booked already."""
    row = await conn.execute(
        text(
            "insert into lead_sales (lead_id, sale, delivery_id) values (:l, :s, :d)"
            " on conflict do nothing returning lead_id"
        ),
        {"l": lead_id, "s": sale, "d": delivery_id},
    )
    return row.first() is not None


async def deliveries_of_lead(conn: AsyncConnection, lead_id: uuid.UUID) -> list[dict[str, Any]]:
    jobs = await conn.execute(
        text(
            "select delivery_id, buyer_id, attempt, sale, price, price_from_response, status,"
            " result, tries as try_count, created_at"
            " from deliveries where lead_id = :l order by attempt"
        ),
        {"l": lead_id},
    )
    result = []
    for job in jobs:
        tries = await conn.execute(
            text(
                "select try_number, started_at, latency_ms, result, http_status, reason,"
                " reason_code, price, buyer_lead_id, key_id, request_sealed, response_sealed"
                " from delivery_tries where delivery_id = :d"
                " order by try_number"
            ),
            {"d": job.delivery_id},
        )
        result.append({**job._mapping, "tries": [dict(t._mapping) for t in tries]})
    return result
