"""Billing's pure rules: which ledger entries a sale makes, and usage periods."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from decimal import Decimal

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
