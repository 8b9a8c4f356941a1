"""Billing's tables: usage per month and the ledger."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_billing.domain import Booking


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


async def book(conn: AsyncConnection, bookings: Sequence[Booking]) -> None:
    """Book transactions not booked before, with their entries, in one statement."""
    unique = list({b.txn_id: b for b in reversed(bookings)}.values())
    if not unique:
        return
    entries = [(b.txn_id, e) for b in unique for e in b.entries]
    await conn.execute(
        text(
            "with booked as ("
            " insert into ledger_transactions (txn_id, account_id, kind, lead_id, buyer_id,"
            "  amount, occurred_at, source_event_id)"
            " select * from unnest(cast(:t as uuid[]), cast(:a as uuid[]), cast(:k as text[]),"
            "  cast(:l as uuid[]), cast(:b as uuid[]), cast(:amt as numeric[]),"
            "  cast(:at as timestamptz[]), cast(:e as uuid[]))"
            " on conflict do nothing returning txn_id)"
            " insert into ledger_entries (txn_id, ledger_account, amount)"
            " select e.txn_id, e.account, e.amount from unnest(cast(:et as uuid[]),"
            "  cast(:ea as text[]), cast(:em as numeric[])) as e(txn_id, account, amount)"
            " join booked using (txn_id)"
        ),
        {
            "t": [b.txn_id for b in unique],
            "a": [b.account_id for b in unique],
            "k": [b.kind for b in unique],
            "l": [b.lead_id for b in unique],
            "b": [b.buyer_id for b in unique],
            "amt": [b.amount for b in unique],
            "at": [b.occurred_at for b in unique],
            "e": [b.source_event_id for b in unique],
            "et": [txn for txn, _ in entries],
            "ea": [e.ledger_account for _, e in entries],
            "em": [e.amount for _, e in entries],
        },
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
