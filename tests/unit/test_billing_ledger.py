"""Billing's ledger entries for sales, payouts and returns: every transaction balances,
and a return moves back exactly the sale's price and payout."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal

import pytest
from lx_billing.domain import (
    Entry,
    return_entries,
    return_txn_id,
    sale_entries,
    sale_txn_id,
)
from lx_schemas.envelope import derived_id

ACC, BUY, SRC, LEAD = (uuid.UUID(int=i) for i in range(1, 5))
AT = dt.datetime(2026, 5, 1, 12, tzinfo=dt.UTC)


def balances(*transactions: Iterable[Entry]) -> dict[str, Decimal]:
    total: dict[str, Decimal] = defaultdict(Decimal)
    for entries in transactions:
        for e in entries:
            total[e.ledger_account] += e.amount
    return {k: v for k, v in total.items() if v}


def test_a_sale_with_a_payout_books_the_price_and_what_the_source_is_owed() -> None:
    entries = sale_entries(ACC, BUY, Decimal("35.10"), source_id=SRC, payout=Decimal("12.00"))
    assert sum(e.amount for e in entries) == 0
    assert {e.ledger_account: e.amount for e in entries} == {
        f"buyer:{BUY}:receivable": Decimal("35.10"),
        f"account:{ACC}:lead_revenue": Decimal("-35.10"),
        f"account:{ACC}:source_payouts": Decimal("12.00"),
        f"source:{SRC}:payable": Decimal("-12.00"),
    }


@pytest.mark.parametrize("payout", [None, Decimal("0.00")])
def test_a_sale_without_a_payout_books_only_the_price(payout: Decimal | None) -> None:
    entries = sale_entries(ACC, BUY, Decimal("35.10"), source_id=SRC, payout=payout)
    assert {e.ledger_account for e in entries} == {
        f"buyer:{BUY}:receivable",
        f"account:{ACC}:lead_revenue",
    }


def test_a_return_credits_the_buyer_the_price_and_claws_back_the_payout() -> None:
    entries = return_entries(ACC, BUY, Decimal("35.10"), source_id=SRC, payout=Decimal("12.00"))
    assert sum(e.amount for e in entries) == 0
    assert {e.ledger_account: e.amount for e in entries} == {
        f"buyer:{BUY}:receivable": Decimal("-35.10"),
        f"account:{ACC}:lead_returns": Decimal("35.10"),
        f"account:{ACC}:source_payouts": Decimal("-12.00"),
        f"source:{SRC}:payable": Decimal("12.00"),
    }


def test_a_returned_sale_leaves_the_buyer_and_the_source_owing_nothing() -> None:
    sale = sale_entries(ACC, BUY, Decimal("35.10"), source_id=SRC, payout=Decimal("12.00"))
    back = return_entries(ACC, BUY, Decimal("35.10"), source_id=SRC, payout=Decimal("12.00"))
    after = balances(sale, back)
    assert f"buyer:{BUY}:receivable" not in after
    assert f"source:{SRC}:payable" not in after
    assert f"account:{ACC}:source_payouts" not in after
    # Revenue stays visible as revenue and its return, not rewritten.
    assert after == {
        f"account:{ACC}:lead_revenue": Decimal("-35.10"),
        f"account:{ACC}:lead_returns": Decimal("35.10"),
    }


def test_a_return_of_a_sale_without_payout_moves_only_the_price() -> None:
    entries = return_entries(ACC, BUY, Decimal("9.99"), source_id=SRC, payout=None)
    assert {e.ledger_account: e.amount for e in entries} == {
        f"buyer:{BUY}:receivable": Decimal("-9.99"),
        f"account:{ACC}:lead_returns": Decimal("9.99"),
    }


def test_transaction_ids_are_derived_once_per_sale_and_per_return() -> None:
    # The first sale keeps the id the ledger has always used for a lead's sale.
    assert sale_txn_id(LEAD, 1) == derived_id("ledger.sale", LEAD)
    assert len({sale_txn_id(LEAD, 1), sale_txn_id(LEAD, 2), sale_txn_id(LEAD, 3)}) == 3
    r1, r2 = uuid.uuid4(), uuid.uuid4()
    assert return_txn_id(r1) == return_txn_id(r1) != return_txn_id(r2)
    assert return_txn_id(LEAD) != sale_txn_id(LEAD, 1)
