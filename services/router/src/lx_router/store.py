"""Router's tables: buyers it routes to and each lead's routing state."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from decimal import Decimal

from lx_schemas.events import BuyerState, LeadContent, Status
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_router.domain import BuyerView, Offer


async def upsert_buyer(conn: AsyncConnection, b: BuyerState) -> None:
    await conn.execute(
        text(
            "insert into buyers (buyer_id, campaign_id, status, price, priority)"
            " values (:id, :c, :s, :p, :pr) on conflict (buyer_id) do update set"
            " campaign_id = excluded.campaign_id, status = excluded.status,"
            " price = excluded.price, priority = excluded.priority"
        ),
        {"id": b.buyer_id, "c": b.campaign_id, "s": b.status, "p": b.price, "pr": b.priority},
    )


async def campaign_buyers(conn: AsyncConnection, campaign_id: uuid.UUID) -> list[BuyerView]:
    rows = await conn.execute(
        text("select buyer_id, status, price, priority from buyers where campaign_id = :c"),
        {"c": campaign_id},
    )
    return [BuyerView(r.buyer_id, Status(r.status), r.price, r.priority) for r in rows]


@dataclass(frozen=True)
class Routing:
    lead_id: uuid.UUID
    account_id: uuid.UUID
    campaign_id: uuid.UUID
    source_id: uuid.UUID
    lead: LeadContent
    plan: list[Offer]
    attempt: int
    status: str


def _plan_json(plan: list[Offer]) -> str:
    return json.dumps([{"buyer_id": str(o.buyer_id), "price": str(o.price)} for o in plan])


async def insert_routing(conn: AsyncConnection, r: Routing) -> bool:
    row = await conn.execute(
        text(
            "insert into routings (lead_id, account_id, campaign_id, source_id, lead, plan,"
            " attempt, status) values (:l, :a, :c, :s, cast(:lead as jsonb), cast(:plan as jsonb),"
            " :att, :st) on conflict (lead_id) do nothing returning lead_id"
        ),
        {
            "l": r.lead_id,
            "a": r.account_id,
            "c": r.campaign_id,
            "s": r.source_id,
            "lead": r.lead.model_dump_json(),
            "plan": _plan_json(r.plan),
            "att": r.attempt,
            "st": r.status,
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
    plan = [Offer(uuid.UUID(o["buyer_id"]), Decimal(o["price"])) for o in row.plan]
    return Routing(
        row.lead_id,
        row.account_id,
        row.campaign_id,
        row.source_id,
        LeadContent.model_validate(row.lead),
        plan,
        row.attempt,
        row.status,
    )


async def update_routing(
    conn: AsyncConnection, lead_id: uuid.UUID, attempt: int, status: str
) -> None:
    await conn.execute(
        text(
            "update routings set attempt = :a, status = :s, updated_at = now() where lead_id = :l"
        ),
        {"a": attempt, "s": status, "l": lead_id},
    )


async def mark_sold(conn: AsyncConnection, lead_id: uuid.UUID) -> None:
    await conn.execute(
        text("update routings set status = 'sold', updated_at = now() where lead_id = :l"),
        {"l": lead_id},
    )
