"""Billing's tables: usage per month and the ledger."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_billing.domain import Entry


async def add_usage(conn: AsyncConnection, rows: dict[tuple[uuid.UUID, dt.date, str], int]) -> None:
    if rows:
        await conn.execute(
            text(
                "insert into usage_monthly (account_id, month, metric, quantity)"
                " values (:a, :m, :metric, :q) on conflict (account_id, month, metric)"
                " do update set quantity = usage_monthly.quantity + excluded.quantity"
            ),
            [{"a": a, "m": m, "metric": metric, "q": q} for (a, m, metric), q in rows.items()],
        )


async def book(
    conn: AsyncConnection,
    *,
    txn_id: uuid.UUID,
    account_id: uuid.UUID,
    kind: str,
    lead_id: uuid.UUID | None,
    buyer_id: uuid.UUID | None,
    amount: Decimal,
    occurred_at: dt.datetime,
    source_event_id: uuid.UUID,
    entries: Sequence[Entry],
) -> None:
    inserted = await conn.execute(
        text(
            "insert into ledger_transactions (txn_id, account_id, kind, lead_id, buyer_id, amount,"
            " occurred_at, source_event_id) values (:t, :a, :k, :l, :b, :amt, :at, :e)"
            " on conflict do nothing returning txn_id"
        ),
        {
            "t": txn_id,
            "a": account_id,
            "k": kind,
            "l": lead_id,
            "b": buyer_id,
            "amt": amount,
            "at": occurred_at,
            "e": source_event_id,
        },
    )
    if inserted.first() is None:
        return  # booked before
    await conn.execute(
        text("insert into ledger_entries (txn_id, ledger_account, amount) values (:t, :acc, :amt)"),
        [{"t": txn_id, "acc": e.ledger_account, "amt": e.amount} for e in entries],
    )


async def usage(conn: AsyncConnection, account_id: uuid.UUID, month: dt.date) -> dict[str, int]:
    rows = await conn.execute(
        text("select metric, quantity from usage_monthly where account_id = :a and month = :m"),
        {"a": account_id, "m": month},
    )
    return {r.metric: int(r.quantity) for r in rows}


async def sales(conn: AsyncConnection, account_id: uuid.UUID, month: dt.date) -> dict[str, Any]:
    # The month's bounds as UTC instants: a bare date compared with a timestamptz would be
    # read in the session's time zone, moving the boundary with the server's settings.
    start = dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)
    end = dt.datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=dt.UTC)
    row = (
        await conn.execute(
            text(
                "select count(*) as n, coalesce(sum(amount), 0.00) as total"
                " from ledger_transactions where account_id = :a and kind = 'lead_sale'"
                " and occurred_at >= :start and occurred_at < :end"
            ),
            {"a": account_id, "start": start, "end": end},
        )
    ).one()
    return {"sold_leads": int(row.n), "revenue": row.total}


async def balances(conn: AsyncConnection, account_id: uuid.UUID) -> dict[str, Decimal]:
    rows = await conn.execute(
        text(
            "select e.ledger_account, sum(e.amount) as balance from ledger_entries e"
            " join ledger_transactions t using (txn_id) where t.account_id = :a"
            " group by e.ledger_account order by e.ledger_account"
        ),
        {"a": account_id},
    )
    return {r.ledger_account: r.balance for r in rows}
