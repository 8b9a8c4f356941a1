"""Analytics' query API for operators."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from lx_platform.http import operator_guard
from lx_platform.runtime import Runtime
from lx_schemas.envelope import Frozen
from sqlalchemy import text

router = APIRouter(prefix="/v1", dependencies=[Depends(operator_guard())], tags=["analytics"])


class HourlyRow(Frozen):
    hour: dt.datetime
    campaign_id: uuid.UUID
    source_id: uuid.UUID
    buyer_id: uuid.UUID | None  # None: the lead-level row
    received: int
    offered: int
    sold: int
    unsold: int
    rejected: int
    errors: int
    revenue: Decimal


@router.get("/stats/hourly", response_model=list[HourlyRow])
async def hourly(
    request: Request,
    campaign_id: uuid.UUID | None = None,
    source_id: uuid.UUID | None = None,
    buyer_id: uuid.UUID | None = None,
    since: Annotated[dt.datetime | None, Query(alias="from")] = None,
    until: Annotated[dt.datetime | None, Query(alias="to")] = None,
) -> list[HourlyRow]:
    """Hourly counts; lead-level rows (received, sold, unsold) have no buyer."""
    rt: Runtime = request.app.state.runtime
    clauses: list[str] = []
    params: dict[str, object] = {}
    for name, value in (
        ("campaign_id", campaign_id),
        ("source_id", source_id),
        ("buyer_id", buyer_id),
    ):
        if value is not None:
            clauses.append(f"{name} = :{name}")
            params[name] = value
    if since is not None:
        clauses.append("hour >= :since")
        params["since"] = since
    if until is not None:
        clauses.append("hour < :until")
        params["until"] = until
    where = f"where {' and '.join(clauses)}" if clauses else ""
    async with rt.db.begin() as conn:
        rows = await conn.execute(
            text(
                f"select * from hourly_stats {where} order by hour, campaign_id, source_id,"
                " buyer_id limit 10000"
            ),
            params,
        )
        # Hours are UTC buckets: shown in UTC whatever the database session's time zone.
        return [
            HourlyRow(
                **{
                    **r._mapping,
                    "hour": r.hour.astimezone(dt.UTC),
                    "buyer_id": r.buyer_id if r.buyer_id.int else None,
                }
            )
            for r in rows
        ]
