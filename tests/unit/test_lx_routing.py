"""lx_routing: filters, schedules, eligibility, money, cap buckets and order."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections import Counter
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from lx_routing import caps, order
from lx_routing.eligibility import ScreenMemo, offer_price, screen
from lx_routing.filters import age_on, evaluate
from lx_routing.money import covers, source_payout
from lx_schemas.events import BuyerState, FieldValue, RejectionCode, Status
from lx_schemas.rules import (
    Cap,
    CapPeriod,
    DistributionMode,
    Filter,
    FilterOp,
    Margin,
    Payout,
    Schedule,
    ScheduleWindow,
    Weekday,
)

TODAY = dt.date(2026, 3, 10)
# Tuesday 10 March 2026, 21:14 in New York (EDT, UTC-4) = Wednesday 01:14 UTC.
NY_TUE_2114 = dt.datetime(2026, 3, 11, 1, 14, tzinfo=dt.UTC)


def buyer(**changes: Any) -> BuyerState:
    base: dict[str, Any] = {
        "buyer_id": uuid.UUID(int=7),
        "account_id": uuid.UUID(int=1),
        "campaign_id": uuid.UUID(int=2),
        "name": "Acme",
        "endpoint_url": "https://acme.example/leads",
        "price": Decimal("30.00"),
        "priority": 1,
    }
    return BuyerState.model_validate(base | changes)


def f(field: str, op: FilterOp, **kw: Any) -> Filter:
    return Filter.model_validate({"field": field, "op": op, **kw})


# --- filters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flt", "value", "ok"),
    [
        (f("state", FilterOp.IN, values=("CA", "NV")), "CA", True),
        (f("state", FilterOp.IN, values=("CA", "NV")), "ca", True),
        (f("state", FilterOp.IN, values=("CA", "NV")), "TX", False),
        (f("state", FilterOp.NOT_IN, values=("TX",)), "CA", True),
        (f("state", FilterOp.NOT_IN, values=("TX",)), "tx", False),
        (f("zip", FilterOp.PREFIX_IN, values=("941", "100")), "94105", True),
        (f("zip", FilterOp.PREFIX_IN, values=("941", "100")), "90210", False),
        (f("zip", FilterOp.IN, values=("94105",)), "94105", True),
        (f("product", FilterOp.EQUALS, value="Auto"), "auto", True),
        (f("product", FilterOp.EQUALS, value="auto"), "home", False),
        (f("product", FilterOp.NOT_EQUALS, value="auto"), "home", True),
        (f("product", FilterOp.NOT_EQUALS, value="auto"), "AUTO", False),
        (f("owner", FilterOp.EQUALS, value=True), True, True),
        (f("owner", FilterOp.EQUALS, value=True), False, False),
        (f("credit", FilterOp.EQUALS, value=700), "700", True),
        (f("credit", FilterOp.EQUALS, value=700), 700, True),
        (f("credit", FilterOp.EQUALS, value=700), "701", False),
        (f("credit", FilterOp.RANGE, min=650, max=800), 700, True),
        (f("credit", FilterOp.RANGE, min=650, max=800), "650", True),
        (f("credit", FilterOp.RANGE, min=650, max=800), "800.01", False),
        (f("credit", FilterOp.RANGE, min=650), "abc", False),
        (f("moved", FilterOp.RANGE, min="2020-01-01"), "2021-05-05", True),
        (f("moved", FilterOp.RANGE, min="2020-01-01"), "2019-12-31", False),
        (f("email", FilterOp.REGEX, pattern=r"@gmail\.com$"), "x@GMAIL.com", True),
        (f("email", FilterOp.REGEX, pattern=r"@gmail\.com$"), "x@yahoo.com", False),
        (f("phone", FilterOp.EXISTS), "+14155550100", True),
        (f("phone", FilterOp.NOT_EXISTS), "+14155550100", False),
        (f("dob", FilterOp.AGE_BETWEEN, min=25, max=64), "2001-03-10", True),  # 25 today
        (f("dob", FilterOp.AGE_BETWEEN, min=25, max=64), "2001-03-11", False),  # 24
        (f("dob", FilterOp.AGE_BETWEEN, max=64), "1961-03-11", True),  # 64
        (f("dob", FilterOp.AGE_BETWEEN, max=64), "1961-03-10", False),  # 65
        (f("dob", FilterOp.AGE_BETWEEN, min=18), "not a date", False),
    ],
)
def test_filter_operators(flt: Filter, value: FieldValue, ok: bool) -> None:
    assert evaluate(flt, {flt.field: value}, TODAY).ok is ok


@pytest.mark.parametrize("op", [op for op in FilterOp if op is not FilterOp.NOT_EXISTS])
@pytest.mark.parametrize("missing", [{}, {"state": None}, {"state": ""}, {"state": "  "}])
def test_a_missing_value_fails_every_operator_but_not_exists(
    op: FilterOp, missing: dict[str, FieldValue]
) -> None:
    by_op: dict[FilterOp, dict[str, Any]] = {
        FilterOp.EQUALS: {"value": "TX"},
        FilterOp.NOT_EQUALS: {"value": "TX"},
        FilterOp.IN: {"values": ("TX",)},
        FilterOp.NOT_IN: {"values": ("TX",)},
        FilterOp.PREFIX_IN: {"values": ("T",)},
        FilterOp.RANGE: {"min": 1},
        FilterOp.AGE_BETWEEN: {"min": 1},
        FilterOp.REGEX: {"pattern": "."},
    }
    operands = by_op.get(op, {})
    verdict = evaluate(f("state", op, **operands), missing, TODAY)
    assert not verdict.ok
    assert verdict.why == "is missing"
    assert evaluate(f("state", FilterOp.NOT_EXISTS), missing, TODAY).ok


def test_a_hostile_pattern_fails_the_filter_within_the_timeout() -> None:
    flt = f("comment", FilterOp.REGEX, pattern=r"(a|aa)+$")
    started = time.monotonic()
    verdict = evaluate(flt, {"comment": "a" * 80 + "b"}, TODAY)
    assert not verdict.ok
    assert "in time" in verdict.why
    # Generous bound: the point is that it returns at all, not how fast.
    assert time.monotonic() - started < 5


def test_age_counts_whole_years_and_leap_birthdays_on_the_first_of_march() -> None:
    assert age_on(dt.date(2000, 2, 29), dt.date(2026, 2, 28)) == 25
    assert age_on(dt.date(2000, 2, 29), dt.date(2026, 3, 1)) == 26


# --- screen -------------------------------------------------------------------------------


def test_a_paused_buyer_is_screened_out_first() -> None:
    r = screen(buyer(status=Status.PAUSED), {}, NY_TUE_2114)
    assert r is not None and r.code is RejectionCode.BUYER_PAUSED
    assert r.detail == "buyer Acme is paused"


def test_a_failed_filter_names_the_filter_the_buyer_and_the_leads_value() -> None:
    b = buyer(filters=[f("state", FilterOp.IN, values=("CA", "NV"))])
    r = screen(b, {"state": "TX"}, NY_TUE_2114)
    assert r is not None and r.code is RejectionCode.FILTER
    assert r.detail == "filter 'state in [CA, NV]' of buyer Acme: state is TX"
    assert r.field == "state" and r.buyer_id == b.buyer_id
    assert screen(b, {"state": "CA"}, NY_TUE_2114) is None


def test_a_filter_on_personal_data_never_quotes_the_value() -> None:
    b = buyer(filters=[f("email", FilterOp.REGEX, pattern=r"@corp\.com$")])
    r = screen(b, {"email": "jane@home.com"}, NY_TUE_2114, pii={"email"})
    assert r is not None and "jane" not in r.detail
    assert r.detail.endswith("email does not meet it")


def test_a_labelled_filter_is_named_by_its_label() -> None:
    b = buyer(filters=[f("dob", FilterOp.AGE_BETWEEN, min=25, label="25 and over")])
    r = screen(b, {"dob": "2020-01-01"}, NY_TUE_2114)
    assert r is not None and r.detail.startswith("filter '25 and over' of buyer Acme: dob")


def test_a_closed_buyer_is_named_with_its_local_time() -> None:
    week = (Weekday.MON, Weekday.TUE, Weekday.WED, Weekday.THU, Weekday.FRI)
    b = buyer(
        timezone="America/New_York",
        schedule=Schedule(windows=(ScheduleWindow(days=week, start="08:00", end="21:00"),)),
    )
    r = screen(b, {}, NY_TUE_2114)
    assert r is not None and r.code is RejectionCode.SCHEDULE_CLOSED
    assert r.detail == "buyer Acme is closed at Tue 21:14 America/New_York"
    assert screen(b, {}, NY_TUE_2114 - dt.timedelta(minutes=15)) is None  # 20:59


def test_a_batchs_shared_screening_gives_every_lead_what_screening_alone_gives() -> None:
    week = (Weekday.MON, Weekday.TUE, Weekday.WED, Weekday.THU, Weekday.FRI)
    buyers = [
        buyer(filters=[f("state", FilterOp.IN, values=("CA", "NV"))]),
        buyer(filters=[f("credit_score", FilterOp.RANGE, min=600), f("state", FilterOp.EXISTS)]),
        buyer(filters=[f("dob", FilterOp.AGE_BETWEEN, min=18, max=25)], timezone="Asia/Tokyo"),
        buyer(filters=[f("email", FilterOp.REGEX, pattern=r"@corp\.com$")]),
        buyer(
            timezone="America/New_York",
            schedule=Schedule(
                windows=(ScheduleWindow(days=week, end="21:00", price=Decimal("12.00")),)
            ),
        ),
        buyer(status=Status.PAUSED),
    ]
    leads: list[dict[str, FieldValue]] = [
        {"state": "CA", "credit_score": 650, "dob": "2000-03-11", "email": "a@corp.com"},
        {"state": "TX", "credit_score": 599, "dob": "2000-03-12", "email": "b@home.com"},
        {"state": "CA", "credit_score": "650", "dob": "1990-01-01"},
        {"state": "", "credit_score": True, "email": "a@corp.com"},
        {"state": "TX", "credit_score": 1},
    ]
    # 20:59 and 21:14 in New York; 23:59 and 00:00 in Tokyo (an age turns over).
    moments = [
        NY_TUE_2114 - dt.timedelta(minutes=15),
        NY_TUE_2114,
        dt.datetime(2026, 3, 10, 14, 59, 30, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 10, 15, 0, 1, tzinfo=dt.UTC),
    ]
    memo = ScreenMemo()
    for _ in range(2):  # the second round is answered from the memo
        for now in moments:
            for values in leads:
                for pii in (frozenset(), frozenset({"email", "dob"})):
                    for b in buyers:
                        alone = screen(b, values, now, pii=pii)
                        shared = screen(b, values, now, pii=pii, memo=memo)
                        assert shared == alone, (b.name, values, now, pii)
                        assert offer_price(b, now, memo) == offer_price(b, now)


def test_schedule_window_start_is_inclusive_end_exclusive_and_24_00_closes_the_day() -> None:
    b = buyer(
        schedule=Schedule(windows=(ScheduleWindow(days=(Weekday.TUE,), start="21:14"),)),
        timezone="America/New_York",
    )
    assert screen(b, {}, NY_TUE_2114) is None
    b2 = buyer(
        schedule=Schedule(windows=(ScheduleWindow(days=(Weekday.TUE,), end="21:14"),)),
        timezone="America/New_York",
    )
    assert screen(b2, {}, NY_TUE_2114) is not None


def test_offer_price_is_the_open_windows_price_else_the_buyers() -> None:
    b = buyer(
        timezone="America/New_York",
        schedule=Schedule(
            windows=(
                ScheduleWindow(days=(Weekday.TUE,), start="00:00", end="12:00"),
                ScheduleWindow(days=(Weekday.TUE,), start="12:00", price=Decimal("45.00")),
            )
        ),
    )
    assert offer_price(b, NY_TUE_2114) == Decimal("45.00")
    assert offer_price(b, NY_TUE_2114 - dt.timedelta(hours=12)) == Decimal("30.00")
    assert offer_price(buyer(), NY_TUE_2114) == Decimal("30.00")


# --- money --------------------------------------------------------------------------------


def test_source_payout_fixed_and_percent_and_the_margin() -> None:
    fixed = Payout(fixed=Decimal("10.00"))
    share = Payout(percent=Decimal("50"))
    none = Margin()
    assert source_payout(fixed, none, Decimal("10.00")) == Decimal("10.00")
    assert source_payout(fixed, none, Decimal("9.99")) is None
    assert source_payout(share, none, Decimal("33.33")) == Decimal("16.66")
    two = Margin(fixed=Decimal("2.00"))
    assert source_payout(fixed, two, Decimal("12.00")) == Decimal("10.00")
    assert source_payout(fixed, two, Decimal("11.99")) is None
    ten_pct = Margin(percent=Decimal("10"))
    assert source_payout(fixed, ten_pct, Decimal("20.00")) == Decimal("10.00")  # keeps 10 >= 2
    assert source_payout(Payout(percent=Decimal("95")), ten_pct, Decimal("20.00")) is None
    assert covers(Decimal("15.00"), Decimal("12.00"), Margin(fixed=Decimal("3.00")))
    assert not covers(Decimal("14.99"), Decimal("12.00"), Margin(fixed=Decimal("3.00")))


# --- cap buckets --------------------------------------------------------------------------


def test_cap_buckets_are_calendar_periods_in_the_buyers_zone() -> None:
    tz = "America/New_York"

    def start(period: CapPeriod, zone: str, now: dt.datetime) -> dt.datetime:
        return caps.bucket_start(period, zone, now).astimezone(ZoneInfo(zone))

    assert start(CapPeriod.HOUR, tz, NY_TUE_2114).isoformat() == "2026-03-10T21:00:00-04:00"
    assert start(CapPeriod.DAY, tz, NY_TUE_2114).isoformat() == "2026-03-10T00:00:00-04:00"
    assert start(CapPeriod.WEEK, tz, NY_TUE_2114).isoformat() == "2026-03-09T00:00:00-04:00"
    assert start(CapPeriod.MONTH, tz, NY_TUE_2114).isoformat() == "2026-03-01T00:00:00-05:00"
    assert caps.bucket_start(CapPeriod.TOTAL, tz, NY_TUE_2114) == caps.TOTAL_BUCKET
    # The same instant is already Wednesday in UTC.
    assert start(CapPeriod.DAY, "UTC", NY_TUE_2114).isoformat() == "2026-03-11T00:00:00+00:00"


def test_the_two_hours_of_a_dst_fall_back_are_two_buckets() -> None:
    first = dt.datetime(2026, 11, 1, 5, 30, tzinfo=dt.UTC)  # 01:30 EDT
    second = dt.datetime(2026, 11, 1, 6, 30, tzinfo=dt.UTC)  # 01:30 EST
    a = caps.bucket_start(CapPeriod.HOUR, "America/New_York", first)
    b = caps.bucket_start(CapPeriod.HOUR, "America/New_York", second)
    assert a != b
    assert (a.hour, b.hour) == (5, 6) and a.tzinfo is b.tzinfo is dt.UTC


def test_a_cap_counts_leads_or_usd() -> None:
    count = Cap(period=CapPeriod.DAY, max_leads=50)
    budget = Cap(period=CapPeriod.DAY, max_usd=Decimal("100.00"))
    assert caps.amount(count, Decimal("40.00")) == 1 and caps.limit(count) == 50
    assert caps.amount(budget, Decimal("40.00")) == Decimal("40.00")
    assert caps.limit(budget) == Decimal("100.00")


# --- order --------------------------------------------------------------------------------

A, B, C, D = (uuid.UUID(int=i) for i in range(1, 5))
CANDIDATES = [
    order.Candidate(A, priority=2, price=Decimal("20.00")),
    order.Candidate(B, priority=1, price=Decimal("30.00")),
    order.Candidate(C, priority=0, price=Decimal("10.00")),
    order.Candidate(D, priority=2, price=Decimal("25.00")),
]
LEAD = uuid.UUID(int=99)


def ids(cs: list[order.Candidate]) -> list[uuid.UUID]:
    return [c.buyer_id for c in cs]


def test_waterfall_is_priority_then_higher_price() -> None:
    got = order.order(CANDIDATES, DistributionMode.WATERFALL, lead_id=LEAD)
    assert ids(got) == [C, B, D, A]


def test_highest_price_is_price_then_priority() -> None:
    tie = [*CANDIDATES, order.Candidate(uuid.UUID(int=5), priority=0, price=Decimal("30.00"))]
    got = order.order(tie, DistributionMode.HIGHEST_PRICE, lead_id=LEAD)
    assert ids(got) == [uuid.UUID(int=5), B, D, A, C]


def test_round_robin_rotates_the_waterfall_by_the_counter() -> None:
    rr = DistributionMode.ROUND_ROBIN
    assert ids(order.order(CANDIDATES, rr, lead_id=LEAD, counter=0)) == [C, B, D, A]
    assert ids(order.order(CANDIDATES, rr, lead_id=LEAD, counter=1)) == [B, D, A, C]
    assert ids(order.order(CANDIDATES, rr, lead_id=LEAD, counter=5)) == [B, D, A, C]
    assert order.order([], rr, lead_id=LEAD, counter=3) == []


def test_weighted_order_is_replayable_and_independent_of_input_order() -> None:
    w = DistributionMode.WEIGHTED
    first = order.order(CANDIDATES, w, lead_id=LEAD)
    assert order.order(list(reversed(CANDIDATES)), w, lead_id=LEAD) == first
    assert sorted(ids(first)) == sorted(ids(CANDIDATES))


def test_weighted_order_puts_buyers_first_in_proportion_to_their_weights() -> None:
    heavy = order.Candidate(A, priority=0, price=Decimal(1), weight=300)
    light = order.Candidate(B, priority=0, price=Decimal(1), weight=100)
    firsts = Counter(
        order.order([heavy, light], DistributionMode.WEIGHTED, lead_id=uuid.UUID(int=i))[0].buyer_id
        for i in range(4000)
    )
    share = firsts[A] / 4000
    assert 0.70 < share < 0.80  # expected 0.75
