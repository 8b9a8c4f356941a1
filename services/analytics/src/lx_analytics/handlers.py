"""Analytics' projection: one upsert of summed deltas per batch."""

from __future__ import annotations

from collections.abc import Sequence

from lx_platform.consumer import Consumed
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_analytics import domain

_UPSERT = text(
    "insert into hourly_stats (hour, campaign_id, source_id, buyer_id, received, offered, sold,"
    " unsold, rejected, errors, revenue) values (:hour, :campaign_id, :source_id, :buyer_id,"
    " :received, :offered, :sold, :unsold, :rejected, :errors, :revenue)"
    " on conflict (hour, campaign_id, source_id, buyer_id) do update set"
    + ",".join(f" {c} = hourly_stats.{c} + excluded.{c}" for c in (*domain.COUNTERS, "revenue"))
)


async def project(conn: AsyncConnection, batch: Sequence[Consumed]) -> None:
    rows = [
        {"hour": h, "campaign_id": c, "source_id": s, "buyer_id": b, **counts}
        for (h, c, s, b), counts in sorted(domain.deltas(i.event for i in batch).items())
    ]
    if rows:
        await conn.execute(_UPSERT, rows)
