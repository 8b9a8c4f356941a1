"""Billing's pure rules: which ledger entries a sale makes, and usage periods."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from decimal import Decimal


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


def sale_entries(account_id: uuid.UUID, buyer_id: uuid.UUID, price: Decimal) -> list[Entry]:
    """A sold lead: the buyer owes its price; the account earns it."""
    entries = [
        Entry(f"buyer:{buyer_id}:receivable", price),
        Entry(f"account:{account_id}:lead_revenue", -price),
    ]
    assert sum(e.amount for e in entries) == 0, "unbalanced transaction"
    return entries


def month_of(at: dt.datetime) -> dt.date:
    utc = at.astimezone(dt.UTC)
    return dt.date(utc.year, utc.month, 1)
