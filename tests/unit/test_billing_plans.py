"""Billing's pure rules for plans, limits, prepaid funds and invoices."""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid
from decimal import Decimal

import pytest
from lx_billing import domain
from lx_billing.domain import Charges, Payment, Plan
from lx_billing.views import InvoiceView, invoice_csv, invoice_html, invoice_view
from lx_schemas import events as ev

ACC, BUY, BUY2, SRC = (uuid.UUID(int=i) for i in range(1, 5))
NOV = dt.date(2026, 11, 1)
D = Decimal
GROWTH = Plan(uuid.UUID(int=9), "Growth", D("499.00"), 1000, D("0.35"), 1200)


def test_overage_is_charged_only_beyond_the_included_leads_to_the_cent() -> None:
    assert domain.overage(GROWTH, 999) == (0, D("0.00"))
    assert domain.overage(GROWTH, 1000) == (0, D("0.00"))
    assert domain.overage(GROWTH, 1003) == (3, D("1.05"))
    odd = Plan(GROWTH.plan_id, "Odd", D("0"), 0, D("0.333"), None)
    assert domain.overage(odd, 3) == (3, D("1.00"))  # rounded half up to cents


def test_an_account_is_over_its_plan_once_usage_reaches_the_hard_cap() -> None:
    assert not domain.over_plan(GROWTH, 1199)
    assert domain.over_plan(GROWTH, 1200)
    assert not domain.over_plan(None, 10**9)  # no plan, no cap
    uncapped = Plan(GROWTH.plan_id, "Open", D("0"), 0, D("0"), None)
    assert not domain.over_plan(uncapped, 10**9)


def test_periods_are_utc_calendar_months_across_the_year_end() -> None:
    assert domain.next_period(dt.date(2026, 12, 1)) == dt.date(2027, 1, 1)
    assert domain.period_bounds(dt.date(2026, 12, 1)) == (
        dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
        dt.datetime(2027, 1, 1, tzinfo=dt.UTC),
    )
    late = dt.datetime(2026, 11, 30, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    assert domain.month_of(late) == dt.date(2026, 12, 1)
    assert domain.parse_month("2026-02") == dt.date(2026, 2, 1)
    for bad in ("2026-13", "2026-2", "March", "2026/02"):
        with pytest.raises(ValueError):
            domain.parse_month(bad)


def test_subscription_dates_must_start_a_month() -> None:
    with pytest.raises(ValueError, match="1st of a month"):
        ev.SubscriptionStartedPayload(
            subscription_id=ACC, plan_id=ACC, starts_on=dt.date(2026, 11, 2)
        )


@pytest.mark.parametrize(
    ("stored", "period", "over", "publish"),
    [
        (None, NOV, False, False),  # nothing to say: services assume within plan
        (None, NOV, True, True),
        ((NOV, False), NOV, True, True),
        ((NOV, True), NOV, True, False),
        ((NOV, True), NOV, False, True),  # the plan changed
        ((NOV, True), dt.date(2026, 12, 1), False, True),  # a new period
        ((NOV, False), dt.date(2026, 12, 1), False, False),
        ((NOV, True), dt.date(2026, 12, 1), True, True),  # over again, in another period
    ],
)
def test_a_limit_is_published_only_when_it_changes(
    stored: tuple[dt.date, bool] | None, period: dt.date, over: bool, publish: bool
) -> None:
    assert domain.limit_changed(stored, period, over) is publish


def test_a_prepaid_buyer_has_funds_while_above_minus_its_credit_limit() -> None:
    assert domain.has_funds(D("0.01"), D("0"))
    assert not domain.has_funds(D("0.00"), D("0"))
    assert domain.has_funds(D("-99.99"), D("100.00"))
    assert not domain.has_funds(D("-100.00"), D("100.00"))


def test_money_moved_by_operators_balances_and_a_balance_is_the_sum_of_its_entries() -> None:
    deposit = domain.deposit_entries(ACC, BUY, D("100.00"))
    sale = domain.sale_entries(ACC, BUY, D("35.10"), source_id=SRC, payout=D("12.00"))
    fees = domain.fee_entries(ACC, D("499.00"), D("7.00"))
    payment = domain.payment_entries(ACC, D("506.00"))
    void = domain.reversed_entries(fees)
    every = [deposit, sale, fees, payment, void]
    for entries in every:
        assert sum(e.amount for e in entries) == 0
    balances: dict[str, Decimal] = {}
    for entries in every:
        for e in entries:
            balances[e.ledger_account] = balances.get(e.ledger_account, D(0)) + e.amount
    # The buyer's funds: its deposit less its sale.
    assert domain.buyer_funds(balances[f"buyer:{BUY}:receivable"]) == D("64.90")
    # Fees voided: the payment is what remains, owed back to the account.
    assert balances[f"account:{ACC}:plan_fees"] == 0
    assert balances[f"account:{ACC}:platform_payable"] == D("506.00")
    assert sum(balances.values()) == 0
    assert domain.fee_entries(ACC, D("0"), D("0")) == []  # a free plan books nothing


def _lines() -> list[ev.InvoiceLine]:
    return domain.invoice_lines(
        NOV,
        GROWTH,
        1010,
        sales=[Charges(BUY2, 1, D("20.00")), Charges(BUY, 3, D("105.30"))],
        returns=[Charges(BUY, 1, D("35.10"))],
        payments=[Payment(ACC, D("400.00"), "card", "INV-11", "stripe", "ch_1")],
    )


def test_invoice_lines_and_totals_to_the_cent() -> None:
    lines = _lines()
    assert [(li.kind.value, li.quantity, li.amount) for li in lines] == [
        ("plan_fee", 1, D("499.00")),
        ("overage", 10, D("3.50")),
        ("lead_charges", 3, D("105.30")),  # buyers in id order
        ("lead_charges", 1, D("20.00")),
        ("returns", 1, D("-35.10")),
        ("payment", 1, D("-400.00")),
    ]
    assert "stripe ch_1" in lines[-1].description and lines[-1].reference == "INV-11"
    assert domain.invoice_totals(lines) == {
        "plan_fee": D("499.00"),
        "overage": D("3.50"),
        "lead_charges": D("125.30"),
        "returns": D("-35.10"),
        "payments": D("-400.00"),
        "platform_fees": D("502.50"),
        "amount_due": D("102.50"),
        "net_lead_charges": D("90.20"),
    }
    no_plan = domain.invoice_lines(NOV, None, 50, [], [], [])
    assert no_plan == [] and domain.invoice_totals(no_plan)["amount_due"] == 0


def _view(name: str) -> InvoiceView:
    lines = domain.invoice_lines(
        NOV,
        Plan(GROWTH.plan_id, name, D("1.00"), 0, D("0"), None),
        0,
        [],
        [],
        [Payment(ACC, D("1.00"), "check", "=HYPERLINK(1)", None, None)],
    )
    return invoice_view(
        {
            "invoice_id": uuid.UUID(int=7),
            "account_id": ACC,
            "period_start": NOV,
            "period_end": dt.date(2026, 12, 1),
            "plan_id": GROWTH.plan_id,
            "status": "issued",
            "issued_at": dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
            "lines": [{**li.model_dump(), "line_no": n} for n, li in enumerate(lines, 1)],
        }
    )


def test_the_html_invoice_escapes_operators_words_and_the_csv_defuses_formulas() -> None:
    view = _view('<script>alert("x")</script> & co')
    page = invoice_html(view)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in page
    rows = list(csv.DictReader(io.StringIO(invoice_csv(view))))
    payment = next(r for r in rows if r["kind"] == "payment")
    assert payment["reference"] == "'=HYPERLINK(1)"
    assert payment["amount"] == "-1.00"  # a negative number stays a number
    totals = {r["description"]: D(r["amount"]) for r in rows if r["kind"] == "total"}
    assert totals["amount_due"] == D("0.00")
