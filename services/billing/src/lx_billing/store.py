"""Billing's tables: usage per month, the ledger, plans and subscriptions, payments,
prepaid buyers, limit states and invoices."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from lx_schemas import events as ev
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_billing.domain import (
    CENT,
    PLAN_METRIC,
    Booking,
    Charges,
    Entry,
    Plan,
    buyer_funds,
    period_bounds,
)
from lx_billing.domain import Payment as DomainPayment


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


# --- plans and subscriptions ----------------------------------------------------------------


def _plan(row: Any) -> Plan:
    return Plan(
        row.plan_id,
        row.name,
        row.monthly_fee,
        int(row.included_leads),
        row.overage_price,
        None if row.hard_cap is None else int(row.hard_cap),
    )


async def insert_plan(conn: AsyncConnection, p: ev.PlanDefinedPayload) -> None:
    await conn.execute(
        text(
            "insert into plans (plan_id, name, monthly_fee, included_leads, overage_price,"
            " hard_cap) values (:id, :n, :f, :i, :o, :c) on conflict do nothing"
        ),
        {
            "id": p.plan_id,
            "n": p.name,
            "f": p.monthly_fee,
            "i": p.included_leads,
            "o": p.overage_price,
            "c": p.hard_cap,
        },
    )


async def plan(conn: AsyncConnection, plan_id: uuid.UUID) -> Plan | None:
    row = (
        await conn.execute(text("select * from plans where plan_id = :p"), {"p": plan_id})
    ).first()
    return None if row is None else _plan(row)


async def accounts_on_plan(conn: AsyncConnection, plan_id: uuid.UUID) -> set[uuid.UUID]:
    rows = await conn.scalars(
        text(
            "select distinct s.account_id from subscriptions s join subscription_terms t"
            " using (subscription_id) where t.plan_id = :p"
        ),
        {"p": plan_id},
    )
    return set(rows)


async def start_subscription(
    conn: AsyncConnection, account_id: uuid.UUID, p: ev.SubscriptionStartedPayload
) -> None:
    await conn.execute(
        text(
            "insert into subscriptions (subscription_id, account_id, starts_on, ends_on)"
            " values (:s, :a, :start, :end) on conflict do nothing"
        ),
        {"s": p.subscription_id, "a": account_id, "start": p.starts_on, "end": p.ends_on},
    )
    await change_subscription(conn, p.subscription_id, p.plan_id, p.starts_on)


async def change_subscription(
    conn: AsyncConnection, subscription_id: uuid.UUID, plan_id: uuid.UUID, effective: dt.date
) -> None:
    # Ordered within the account's partition: the later change of the same month wins.
    await conn.execute(
        text(
            "insert into subscription_terms (subscription_id, effective_from, plan_id)"
            " select :s, :e, :p where exists"
            " (select 1 from subscriptions where subscription_id = :s)"
            " on conflict (subscription_id, effective_from) do update set plan_id = :p"
        ),
        {"s": subscription_id, "e": effective, "p": plan_id},
    )


async def end_subscription(
    conn: AsyncConnection, subscription_id: uuid.UUID, ends_on: dt.date
) -> None:
    await conn.execute(
        text("update subscriptions set ends_on = :e where subscription_id = :s"),
        {"s": subscription_id, "e": ends_on},
    )


_PLAN_OF_MONTH = (
    "select t.plan_id from subscriptions s join subscription_terms t using (subscription_id)"
    " where s.account_id = {account} and s.starts_on <= {month}"
    " and (s.ends_on is null or s.ends_on > {month}) and t.effective_from <= {month}"
    " order by s.starts_on desc, t.effective_from desc limit 1"
)


async def plan_for(conn: AsyncConnection, account_id: uuid.UUID, month: dt.date) -> Plan | None:
    row = (
        await conn.execute(
            text(
                "select p.* from plans p where p.plan_id = ("
                + _PLAN_OF_MONTH.format(account=":a", month=":m")
                + ")"
            ),
            {"a": account_id, "m": month},
        )
    ).first()
    return None if row is None else _plan(row)


async def subscriptions(conn: AsyncConnection, account_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            "select s.subscription_id, s.starts_on, s.ends_on, t.effective_from, t.plan_id"
            " from subscriptions s join subscription_terms t using (subscription_id)"
            " where s.account_id = :a order by s.starts_on, t.effective_from"
        ),
        {"a": account_id},
    )
    out: dict[uuid.UUID, dict[str, Any]] = {}
    for r in rows:
        sub = out.setdefault(
            r.subscription_id,
            {
                "subscription_id": r.subscription_id,
                "starts_on": r.starts_on,
                "ends_on": r.ends_on,
                "terms": [],
            },
        )
        sub["terms"].append({"effective_from": r.effective_from, "plan_id": r.plan_id})
    return list(out.values())


async def subscription_account(
    conn: AsyncConnection, subscription_id: uuid.UUID
) -> tuple[uuid.UUID, dt.date, dt.date | None] | None:
    row = (
        await conn.execute(
            text(
                "select account_id, starts_on, ends_on from subscriptions"
                " where subscription_id = :s"
            ),
            {"s": subscription_id},
        )
    ).first()
    return None if row is None else (row.account_id, row.starts_on, row.ends_on)


# --- limits ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LimitInputs:
    account_id: uuid.UUID
    period_start: dt.date
    used: int
    plan: Plan | None
    stored: tuple[dt.date, bool] | None


async def limit_inputs(conn: AsyncConnection, accounts: set[uuid.UUID]) -> list[LimitInputs]:
    """For each account with metered leads: its latest period with usage, that period's
    usage and plan, and the state last stored. The latest period is a maximum and the
    usage a sum, so the result is the same whatever order the events came in."""
    if not accounts:
        return []
    rows = await conn.execute(
        text(
            "select a.account_id, m.month, coalesce(u.quantity, 0) as used,"
            " l.period_start as stored_period, l.over_plan as stored_over,"
            " p.plan_id, p.name, p.monthly_fee, p.included_leads, p.overage_price, p.hard_cap"
            " from unnest(cast(:a as uuid[])) as a(account_id)"
            " cross join lateral (select max(month) as month from usage_monthly"
            "  where account_id = a.account_id and metric = :metric) m"
            " left join usage_monthly u on u.account_id = a.account_id and u.month = m.month"
            "  and u.metric = :metric"
            " left join account_limits l on l.account_id = a.account_id"
            " left join plans p on p.plan_id = ("
            + _PLAN_OF_MONTH.format(account="a.account_id", month="m.month")
            + ") where m.month is not null order by a.account_id"
        ),
        {"a": sorted(accounts), "metric": PLAN_METRIC},
    )
    return [
        LimitInputs(
            r.account_id,
            r.month,
            int(r.used),
            None if r.plan_id is None else _plan(r),
            None if r.stored_period is None else (r.stored_period, r.stored_over),
        )
        for r in rows
    ]


async def save_limit(conn: AsyncConnection, li: LimitInputs, over: bool) -> None:
    await conn.execute(
        text(
            "insert into account_limits (account_id, period_start, over_plan, plan_id, hard_cap)"
            " values (:a, :p, :o, :plan, :cap) on conflict (account_id) do update"
            " set period_start = excluded.period_start, over_plan = excluded.over_plan,"
            " plan_id = excluded.plan_id, hard_cap = excluded.hard_cap"
        ),
        {
            "a": li.account_id,
            "p": li.period_start,
            "o": over,
            "plan": li.plan.plan_id if li.plan else None,
            "cap": li.plan.hard_cap if li.plan else None,
        },
    )


async def account_limit(conn: AsyncConnection, account_id: uuid.UUID) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            text("select * from account_limits where account_id = :a"), {"a": account_id}
        )
    ).first()
    return None if row is None else dict(row._mapping)


# --- payments and prepaid buyers ------------------------------------------------------------


async def insert_payment(
    conn: AsyncConnection,
    *,
    payment_id: uuid.UUID,
    account_id: uuid.UUID,
    buyer_id: uuid.UUID | None,
    kind: str,
    p: ev.PaymentRecordedPayload | ev.FundsDepositedPayload,
    at: dt.datetime,
) -> None:
    await conn.execute(
        text(
            "insert into payments (payment_id, account_id, buyer_id, kind, amount, method,"
            " reference, provider, provider_ref, received_at)"
            " values (:id, :a, :b, :k, :amt, :m, :r, :p, :pr, :at) on conflict do nothing"
        ),
        {
            "id": payment_id,
            "a": account_id,
            "b": buyer_id,
            "k": kind,
            "amt": p.amount,
            "m": p.method.value,
            "r": p.reference,
            "p": p.provider,
            "pr": p.provider_ref,
            "at": at,
        },
    )


async def payment(conn: AsyncConnection, payment_id: uuid.UUID) -> dict[str, Any] | None:
    row = (
        await conn.execute(text("select * from payments where payment_id = :p"), {"p": payment_id})
    ).first()
    return None if row is None else dict(row._mapping)


async def enrol_prepaid(
    conn: AsyncConnection,
    buyer_id: uuid.UUID,
    account_id: uuid.UUID,
    credit_limit: Decimal | None = None,
) -> None:
    await conn.execute(
        text(
            "insert into prepaid_buyers (buyer_id, account_id, credit_limit)"
            " values (:b, :a, coalesce(cast(:c as numeric), 0)) on conflict (buyer_id) do update"
            " set credit_limit = coalesce(cast(:c as numeric), prepaid_buyers.credit_limit)"
        ),
        {"b": buyer_id, "a": account_id, "c": credit_limit},
    )


@dataclass(frozen=True)
class Funds:
    buyer_id: uuid.UUID
    account_id: uuid.UUID
    balance: Decimal
    credit_limit: Decimal
    has_funds: bool  # as last published


async def prepaid_funds(conn: AsyncConnection, buyers: Sequence[uuid.UUID]) -> list[Funds]:
    """Prepaid buyers among ``buyers``, with their balance: minus their receivable's."""
    if not buyers:
        return []
    rows = await conn.execute(
        text(
            "select b.buyer_id, b.account_id, b.credit_limit, b.has_funds,"
            " coalesce((select sum(e.amount) from ledger_entries e"
            "  where e.ledger_account = 'buyer:' || b.buyer_id || :suffix), 0.00)"
            "  as receivable"
            " from prepaid_buyers b where b.buyer_id = any(cast(:b as uuid[]))"
            " order by b.buyer_id"
        ),
        {"b": list(buyers), "suffix": ":receivable"},
    )
    return [
        Funds(
            r.buyer_id,
            r.account_id,
            buyer_funds(r.receivable),
            r.credit_limit,
            r.has_funds,
        )
        for r in rows
    ]


async def set_has_funds(conn: AsyncConnection, buyer_id: uuid.UUID, has: bool) -> None:
    await conn.execute(
        text("update prepaid_buyers set has_funds = :h where buyer_id = :b"),
        {"b": buyer_id, "h": has},
    )


# --- invoices -------------------------------------------------------------------------------


async def charges(
    conn: AsyncConnection, account_id: uuid.UUID, period_start: dt.date, kind: str
) -> list[Charges]:
    start, end = period_bounds(period_start)
    rows = await conn.execute(
        text(
            "select buyer_id, count(*) as n, sum(amount) as total from ledger_transactions"
            " where account_id = :a and kind = :k and occurred_at >= :s and occurred_at < :e"
            " group by buyer_id order by buyer_id"
        ),
        {"a": account_id, "k": kind, "s": start, "e": end},
    )
    return [Charges(r.buyer_id, int(r.n), r.total) for r in rows]


async def period_payments(
    conn: AsyncConnection, account_id: uuid.UUID, period_start: dt.date
) -> list[DomainPayment]:
    start, end = period_bounds(period_start)
    rows = await conn.execute(
        text(
            "select * from payments where account_id = :a and kind = 'payment'"
            " and received_at >= :s and received_at < :e order by received_at, payment_id"
        ),
        {"a": account_id, "s": start, "e": end},
    )
    return [
        DomainPayment(r.payment_id, r.amount, r.method, r.reference, r.provider, r.provider_ref)
        for r in rows
    ]


async def usage_of(conn: AsyncConnection, account_id: uuid.UUID, month: dt.date) -> int:
    used = await conn.scalar(
        text(
            "select quantity from usage_monthly where account_id = :a and month = :m"
            " and metric = :metric"
        ),
        {"a": account_id, "m": month, "metric": PLAN_METRIC},
    )
    return int(used or 0)


async def voided_invoices(conn: AsyncConnection, account_id: uuid.UUID, month: dt.date) -> int:
    n = await conn.scalar(
        text(
            "select count(*) from invoices where account_id = :a and period_start = :m"
            " and status = 'void'"
        ),
        {"a": account_id, "m": month},
    )
    return int(n or 0)


async def insert_invoice(
    conn: AsyncConnection, account_id: uuid.UUID, p: ev.InvoiceIssuedPayload, at: dt.datetime
) -> bool:
    """Record an issued invoice; False when the period already has one in force (two
    issued at once: the first one kept, in the account partition's order)."""
    inserted = await conn.scalar(
        text(
            "insert into invoices (invoice_id, account_id, period_start, period_end, plan_id,"
            " status, amount_due, issued_at)"
            " select :id, :a, :s, :e, :plan, 'issued', :due, :at where not exists"
            " (select 1 from invoices where account_id = :a and period_start = :s"
            "  and status <> 'void') on conflict do nothing returning true"
        ),
        {
            "id": p.invoice_id,
            "a": account_id,
            "s": p.period_start,
            "e": p.period_end,
            "plan": p.plan_id,
            "due": p.amount_due,
            "at": at,
        },
    )
    if not inserted:
        return False
    if not p.lines:
        # An invoice of a month with nothing on it: no lines (and an empty parameter list
        # would make the insert below fail on every replay, dead-lettering the invoice).
        return True
    await conn.execute(
        text(
            "insert into invoice_lines (invoice_id, line_no, kind, description, quantity,"
            " unit_price, amount, buyer_id, reference)"
            " values (:id, :n, :k, :d, :q, :u, :amt, :b, :r)"
        ),
        [
            {
                "id": p.invoice_id,
                "n": n,
                "k": line.kind.value,
                "d": line.description,
                "q": line.quantity,
                "u": line.unit_price,
                "amt": line.amount,
                "b": line.buyer_id,
                "r": line.reference,
            }
            for n, line in enumerate(p.lines, start=1)
        ],
    )
    return True


async def mark_invoice(
    conn: AsyncConnection,
    invoice_id: uuid.UUID,
    status: str,
    at: dt.datetime,
    *,
    payment_id: uuid.UUID | None = None,
    reason: str | None = None,
) -> dict[str, Any] | None:
    """Move an issued invoice to ``paid`` or ``void``; None if it is not issued."""
    column = "paid_at" if status == "paid" else "voided_at"
    row = (
        await conn.execute(
            text(
                f"update invoices set status = :st, {column} = :at,"
                " payment_id = coalesce(:pay, payment_id), void_reason = :r"
                " where invoice_id = :id and status = 'issued' returning *"
            ),
            {"id": invoice_id, "st": status, "at": at, "pay": payment_id, "r": reason},
        )
    ).first()
    return None if row is None else dict(row._mapping)


async def invoice(conn: AsyncConnection, invoice_id: uuid.UUID) -> dict[str, Any] | None:
    row = (
        await conn.execute(text("select * from invoices where invoice_id = :i"), {"i": invoice_id})
    ).first()
    if row is None:
        return None
    lines = await conn.execute(
        text("select * from invoice_lines where invoice_id = :i order by line_no"),
        {"i": invoice_id},
    )
    return {**row._mapping, "lines": [dict(r._mapping) for r in lines]}


async def invoice_in_force(
    conn: AsyncConnection, account_id: uuid.UUID, month: dt.date
) -> uuid.UUID | None:
    found: uuid.UUID | None = await conn.scalar(
        text(
            "select invoice_id from invoices where account_id = :a and period_start = :m"
            " and status <> 'void'"
        ),
        {"a": account_id, "m": month},
    )
    return found


async def fee_entries_of(conn: AsyncConnection, txn_id: uuid.UUID) -> list[Entry]:
    rows = await conn.execute(
        text(
            "select ledger_account, amount from ledger_entries where txn_id = :t"
            " order by ledger_account"
        ),
        {"t": txn_id},
    )
    return [Entry(r.ledger_account, r.amount) for r in rows]


# --- checks ---------------------------------------------------------------------------------


async def ledger_totals(
    conn: AsyncConnection, account_id: uuid.UUID, period_start: dt.date
) -> dict[str, Decimal]:
    """An invoice's totals as the ledger has them: sums of the account's entries in the
    period (to reconcile an invoice with, to the cent)."""
    start, end = period_bounds(period_start)
    a = f"account:{account_id}:"
    row = (
        await conn.execute(
            text(
                "select"
                " coalesce(sum(e.amount) filter (where e.ledger_account = :a || 'plan_fees'), 0)"
                "  as plan_fee,"
                " coalesce(sum(e.amount) filter (where e.ledger_account = :a || 'overage_fees'),"
                "  0) as overage,"
                " -coalesce(sum(e.amount) filter (where e.ledger_account = :a || 'lead_revenue'),"
                "  0) as lead_charges,"
                " -coalesce(sum(e.amount) filter (where e.ledger_account = :a || 'lead_returns'),"
                "  0) as returns,"
                " coalesce(sum(e.amount) filter (where e.ledger_account = :a || 'cash'"
                "  and t.kind = 'payment'), 0) as payments,"
                " -coalesce(sum(e.amount) filter"
                "  (where e.ledger_account = :a || 'platform_payable'), 0) as amount_due"
                " from ledger_transactions t join ledger_entries e using (txn_id)"
                " where t.account_id = :acc and t.occurred_at >= :s and t.occurred_at < :e"
            ),
            {"a": a, "acc": account_id, "s": start, "e": end},
        )
    ).one()
    t = {k: Decimal(v).quantize(CENT) for k, v in row._mapping.items()}
    fees = t["plan_fee"] + t["overage"]
    return {
        **t,
        "platform_fees": fees,
        "net_lead_charges": t["lead_charges"] + t["returns"],
    }


async def unbalanced_transactions(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Transactions whose entries do not sum to zero (none, ever)."""
    rows = await conn.execute(
        text(
            "select t.txn_id, t.kind, coalesce(sum(e.amount), 0) as total"
            " from ledger_transactions t left join ledger_entries e using (txn_id)"
            " group by t.txn_id, t.kind having coalesce(sum(e.amount), 0) <> 0"
            " or count(e.txn_id) = 0 limit 100"
        )
    )
    return [dict(r._mapping) for r in rows]
