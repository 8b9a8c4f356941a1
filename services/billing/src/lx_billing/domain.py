"""Billing's pure rules: the ledger entries each event makes, billing periods, plans and
their caps, prepaid funds and invoice lines."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from lx_schemas import events as ev
from lx_schemas.envelope import derived_id


@dataclass(frozen=True)
class Entry:
    ledger_account: str
    amount: Decimal  # debit > 0, credit < 0


@dataclass(frozen=True)
class Booking:
    """One ledger transaction with its entries; ``txn_id`` makes booking it idempotent."""

    txn_id: uuid.UUID
    account_id: uuid.UUID
    kind: str
    lead_id: uuid.UUID | None
    buyer_id: uuid.UUID | None
    amount: Decimal
    occurred_at: dt.datetime
    source_event_id: uuid.UUID
    entries: tuple[Entry, ...]


def _balanced(entries: list[Entry]) -> list[Entry]:
    assert sum(e.amount for e in entries) == 0, "unbalanced transaction"
    return entries


def _payout_entries(account_id: uuid.UUID, source_id: uuid.UUID, payout: Decimal) -> list[Entry]:
    """The account owes its source the payout."""
    return [
        Entry(f"account:{account_id}:source_payouts", payout),
        Entry(f"source:{source_id}:payable", -payout),
    ]


def sale_entries(
    account_id: uuid.UUID,
    buyer_id: uuid.UUID,
    price: Decimal,
    *,
    source_id: uuid.UUID | None = None,
    payout: Decimal | None = None,
) -> list[Entry]:
    """A sold lead: the buyer owes its price; the account earns it; and, when the sale
    recorded one, the account owes the source its payout."""
    entries = [
        Entry(f"buyer:{buyer_id}:receivable", price),
        Entry(f"account:{account_id}:lead_revenue", -price),
    ]
    if source_id is not None and payout:
        entries += _payout_entries(account_id, source_id, payout)
    return _balanced(entries)


def return_entries(
    account_id: uuid.UUID,
    buyer_id: uuid.UUID,
    price: Decimal,
    *,
    source_id: uuid.UUID,
    payout: Decimal | None,
) -> list[Entry]:
    """A returned sale, reversed: the buyer is credited its price (against the account's
    returns, a contra-revenue account), and the source's payout is clawed back."""
    entries = [
        Entry(f"buyer:{buyer_id}:receivable", -price),
        Entry(f"account:{account_id}:lead_returns", price),
    ]
    if payout:
        entries += [
            Entry(e.ledger_account, -e.amount)
            for e in _payout_entries(account_id, source_id, payout)
        ]
    return _balanced(entries)


def sale_txn_id(lead_id: uuid.UUID, sale: int) -> uuid.UUID:
    # A lead's first sale keeps the id it has always had, so a replay of the log onto an
    # existing ledger books nothing twice; further sales (multi-sell) add their number.
    return (
        derived_id("ledger.sale", lead_id)
        if sale == 1
        else derived_id("ledger.sale", lead_id, sale)
    )


def return_txn_id(return_id: uuid.UUID) -> uuid.UUID:
    return derived_id("ledger.return", return_id)


def month_of(at: dt.datetime) -> dt.date:
    utc = at.astimezone(dt.UTC)
    return dt.date(utc.year, utc.month, 1)


# --- periods --------------------------------------------------------------------------------
# A billing period is a UTC calendar month, named by its first day (as usage_monthly is).

CENT = Decimal("0.01")
# Platform-wide records (plans) carry the nil UUID as their envelope's account.
PLATFORM_ACCOUNT = uuid.UUID(int=0)
# The usage a plan meters and caps: leads ingest accepted (the one thing ingest can stop).
PLAN_METRIC = "leads_received"


def next_period(start: dt.date) -> dt.date:
    return dt.date(start.year + start.month // 12, start.month % 12 + 1, 1)


def period_bounds(start: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """The period's bounds as UTC instants, [start, end)."""
    end = next_period(start)
    return (
        dt.datetime(start.year, start.month, 1, tzinfo=dt.UTC),
        dt.datetime(end.year, end.month, 1, tzinfo=dt.UTC),
    )


def parse_month(value: str) -> dt.date:
    """``YYYY-MM`` to the period's first day; ``ValueError`` otherwise."""
    year, sep, month = value.partition("-")
    if not (sep and len(year) == 4 and len(month) == 2 and year.isdigit() and month.isdigit()):
        raise ValueError("month must be YYYY-MM")
    return dt.date(int(year), int(month), 1)


# --- plans and limits -----------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    plan_id: uuid.UUID
    name: str
    monthly_fee: Decimal
    included_leads: int
    overage_price: Decimal
    hard_cap: int | None


def overage(plan: Plan, used: int) -> tuple[int, Decimal]:
    """Leads beyond those included, and what they cost."""
    extra = max(0, used - plan.included_leads)
    return extra, (plan.overage_price * extra).quantize(CENT, ROUND_HALF_UP)


def over_plan(plan: Plan | None, used: int) -> bool:
    """Once usage reaches the hard cap, the account's next lead would exceed it."""
    return plan is not None and plan.hard_cap is not None and used >= plan.hard_cap


def limit_reason(plan: Plan | None, period_start: dt.date, over: bool) -> str:
    month = period_start.strftime("%Y-%m")
    if plan is None:
        return f"no plan caps this account in {month}"
    if not over:
        cap = "no cap" if plan.hard_cap is None else f"a cap of {plan.hard_cap} leads"
        return f"within the {plan.name} plan ({cap}) in {month}"
    return f"the {plan.name} plan's cap of {plan.hard_cap} leads in {month} is reached"


def limit_changed(stored: tuple[dt.date, bool] | None, period_start: dt.date, over: bool) -> bool:
    """Whether to publish the account's limit: the enforcing services assume an account
    they have heard nothing of is within its plan."""
    if stored is None:
        return over
    stored_period, stored_over = stored
    return over != stored_over or (over and period_start != stored_period)


# --- money moved by operators ---------------------------------------------------------------


def fee_entries(account_id: uuid.UUID, plan_fee: Decimal, overage_fee: Decimal) -> list[Entry]:
    """Platform fees charged to the account: expenses it owes the platform."""
    entries = [
        Entry(f"account:{account_id}:plan_fees", plan_fee),
        Entry(f"account:{account_id}:overage_fees", overage_fee),
        Entry(f"account:{account_id}:platform_payable", -(plan_fee + overage_fee)),
    ]
    return _balanced([e for e in entries if e.amount])


def reversed_entries(entries: list[Entry]) -> list[Entry]:
    return _balanced([Entry(e.ledger_account, -e.amount) for e in entries])


def payment_entries(account_id: uuid.UUID, amount: Decimal) -> list[Entry]:
    """The account pays the platform: its debt falls, its cash goes out."""
    return _balanced(
        [
            Entry(f"account:{account_id}:platform_payable", amount),
            Entry(f"account:{account_id}:cash", -amount),
        ]
    )


def deposit_entries(account_id: uuid.UUID, buyer_id: uuid.UUID, amount: Decimal) -> list[Entry]:
    """A buyer pays in advance: cash in, and its receivable goes into credit. Its sales
    debit that receivable, so a buyer's funds are minus its receivable's balance."""
    return _balanced(
        [
            Entry(f"account:{account_id}:cash", amount),
            Entry(f"buyer:{buyer_id}:receivable", -amount),
        ]
    )


def buyer_funds(receivable_balance: Decimal) -> Decimal:
    return -receivable_balance


def has_funds(balance: Decimal, credit_limit: Decimal) -> bool:
    """A prepaid buyer may spend down to minus its credit limit, not to it."""
    return balance + credit_limit > 0


def fees_txn_id(invoice_id: uuid.UUID) -> uuid.UUID:
    return derived_id("ledger.fees", invoice_id)


def fees_void_txn_id(invoice_id: uuid.UUID) -> uuid.UUID:
    return derived_id("ledger.fees_void", invoice_id)


def payment_txn_id(payment_id: uuid.UUID) -> uuid.UUID:
    return derived_id("ledger.payment", payment_id)


def deposit_txn_id(deposit_id: uuid.UUID) -> uuid.UUID:
    return derived_id("ledger.deposit", deposit_id)


# --- invoices -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Charges:
    """A buyer's sales (or returns) in a period: how many, for how much."""

    buyer_id: uuid.UUID
    count: int
    amount: Decimal


@dataclass(frozen=True)
class Payment:
    payment_id: uuid.UUID
    amount: Decimal
    method: str
    reference: str
    provider: str | None
    provider_ref: str | None


def invoice_id_for(account_id: uuid.UUID, period_start: dt.date, voided: int) -> uuid.UUID:
    # Derived, so that two operators issuing the same period at once issue one invoice.
    return derived_id("invoice", account_id, period_start, voided)


def invoice_lines(
    period_start: dt.date,
    plan: Plan | None,
    used: int,
    sales: list[Charges],
    returns: list[Charges],
    payments: list[Payment],
) -> list[ev.InvoiceLine]:
    """The period's lines: the plan's fee and overage, what each buyer was charged and
    credited back (in buyer order), and the payments received."""
    month = period_start.strftime("%Y-%m")
    lines: list[ev.InvoiceLine] = []
    K = ev.InvoiceLineKind
    if plan is not None:
        lines.append(
            ev.InvoiceLine(
                kind=K.PLAN_FEE,
                description=f"{plan.name} plan, {month}",
                quantity=1,
                unit_price=plan.monthly_fee,
                amount=plan.monthly_fee,
            )
        )
        extra, cost = overage(plan, used)
        if extra:
            lines.append(
                ev.InvoiceLine(
                    kind=K.OVERAGE,
                    description=f"{extra} leads beyond the {plan.included_leads} included",
                    quantity=extra,
                    unit_price=plan.overage_price,
                    amount=cost,
                )
            )
    for s in sorted(sales, key=lambda c: str(c.buyer_id)):
        lines.append(
            ev.InvoiceLine(
                kind=K.LEAD_CHARGES,
                description=f"{s.count} leads sold to buyer {s.buyer_id}",
                quantity=s.count,
                amount=s.amount,
                buyer_id=s.buyer_id,
            )
        )
    for r in sorted(returns, key=lambda c: str(c.buyer_id)):
        lines.append(
            ev.InvoiceLine(
                kind=K.RETURNS,
                description=f"{r.count} leads returned by buyer {r.buyer_id}",
                quantity=r.count,
                amount=-r.amount,
                buyer_id=r.buyer_id,
            )
        )
    for p in payments:
        via = f" via {p.provider} {p.provider_ref}" if p.provider else ""
        lines.append(
            ev.InvoiceLine(
                kind=K.PAYMENT,
                description=f"payment by {p.method}, {p.reference}{via}",
                quantity=1,
                amount=-p.amount,
                reference=p.reference,
            )
        )
    return lines


TOTAL_KEYS = ("plan_fee", "overage", "lead_charges", "returns", "payments")


def invoice_totals(lines: list[ev.InvoiceLine]) -> dict[str, Decimal]:
    """Each kind's sum; ``platform_fees`` (plan fee and overage, owed to the platform);
    ``amount_due`` (those fees less payments); ``net_lead_charges`` (what buyers were
    charged less what was credited back: the account's own revenue, not owed)."""
    by_kind = {
        "plan_fee": ev.InvoiceLineKind.PLAN_FEE,
        "overage": ev.InvoiceLineKind.OVERAGE,
        "lead_charges": ev.InvoiceLineKind.LEAD_CHARGES,
        "returns": ev.InvoiceLineKind.RETURNS,
        "payments": ev.InvoiceLineKind.PAYMENT,
    }
    t = {
        key: sum((line.amount for line in lines if line.kind == kind), Decimal("0.00"))
        for key, kind in by_kind.items()
    }
    fees = t["plan_fee"] + t["overage"]
    return {
        **t,
        "platform_fees": fees,
        "amount_due": fees + t["payments"],
        "net_lead_charges": t["lead_charges"] + t["returns"],
    }
