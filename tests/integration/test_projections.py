"""Billing and analytics, the two projections, in-process against real Kafka and PostgreSQL.

One log of lead and usage events is published once for the module, out of order (later
hours first, an earlier hour last) and with some events published twice; both services
consume it under their own consumer group. The assertions run only once each group has
committed every offset of its topics, so a late duplicate cannot slip in afterwards.

Both services talk to PostgreSQL in a session whose time zone is not UTC: months and
hours are UTC calendar periods whatever the database's time zone (servers installed
by a distribution often run in the machine's local zone).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import httpx
import pytest
from lx_analytics.main import create_service as create_analytics
from lx_analytics.settings import AnalyticsSettings
from lx_billing.main import create_service as create_billing
from lx_billing.settings import BillingSettings
from lx_devstack.infra import Infra
from lx_schemas import Event
from lx_schemas import events as ev
from lx_schemas.rules import Payout

from tests.support.kafka import publish
from tests.support.services import OPERATOR, eventually, hosted, settings_for
from tests.support.settle import caught_up

T = TypeVar("T")
NOT_UTC = "options=-c%20timezone%3DAmerica/New_York"  # UTC-4 in mid-March 2025


def not_utc(url: str) -> str:
    """The same database, in sessions whose time zone is not UTC."""
    return f"{url}{'&' if '?' in url else '?'}{NOT_UTC}"


ACCOUNT, OTHER_ACCOUNT = uuid.uuid4(), uuid.uuid4()
CAMPAIGN, OTHER_CAMPAIGN = uuid.uuid4(), uuid.uuid4()
S1, S2, B1, B2 = (uuid.uuid4() for _ in range(4))
L1, L2, L3, L4, L5, L_OTHER = (uuid.uuid4() for _ in range(6))


def at(day: int, hour: int, minute: int, second: float = 0, month: int = 3) -> dt.datetime:
    whole = int(second)
    return dt.datetime(
        2025, month, day, hour, minute, whole, int((second - whole) * 1e6), tzinfo=dt.UTC
    )


# --- helpers --------------------------------------------------------------------------------


@dataclass
class Projections:
    billing: httpx.AsyncClient
    analytics: httpx.AsyncClient


# --- the log --------------------------------------------------------------------------------


def env(lead: uuid.UUID, when: dt.datetime, account: uuid.UUID = ACCOUNT) -> dict[str, Any]:
    return {"account_id": account, "correlation_id": lead, "producer": "test", "occurred_at": when}


def ref(lead: uuid.UUID, source: uuid.UUID, campaign: uuid.UUID = CAMPAIGN) -> dict[str, Any]:
    return {"lead_id": lead, "campaign_id": campaign, "source_id": source}


def received(lead: uuid.UUID, source: uuid.UUID, when: dt.datetime) -> ev.LeadReceived:
    return ev.LeadReceived.new(
        **env(lead, when),
        payload=ev.LeadReceivedPayload(
            **ref(lead, source), lead=ev.LeadContent(fields={"state": "CA"})
        ),
    )


def routed(
    lead: uuid.UUID,
    source: uuid.UUID,
    buyer: uuid.UUID,
    attempt: int,
    price: str,
    when: dt.datetime,
) -> ev.LeadRouted:
    return ev.LeadRouted.new(
        **env(lead, when),
        payload=ev.LeadRoutedPayload(
            **ref(lead, source),
            buyer_id=buyer,
            attempt=attempt,
            delivery_id=uuid.uuid5(lead, str(attempt)),
            price=Decimal(price),
            payout=Payout(fixed=Decimal("0.00")),
            lead=ev.LeadContent(fields={"state": "CA"}),
        ),
    )


def attempted(
    lead: uuid.UUID,
    source: uuid.UUID,
    buyer: uuid.UUID,
    attempt: int,
    result: ev.DeliveryResult,
    when: dt.datetime,
    *,
    try_number: int = 1,
    final: bool = True,
) -> ev.DeliveryAttempted:
    return ev.DeliveryAttempted.new(
        **env(lead, when),
        payload=ev.DeliveryAttemptedPayload(
            **ref(lead, source),
            buyer_id=buyer,
            delivery_id=uuid.uuid5(lead, str(attempt)),
            attempt=attempt,
            try_number=try_number,
            final=final,
            result=result,
            latency_ms=40.0,
        ),
    )


def sold(
    lead: uuid.UUID,
    source: uuid.UUID,
    buyer: uuid.UUID,
    attempt: int,
    price: str,
    when: dt.datetime,
    account: uuid.UUID = ACCOUNT,
    campaign: uuid.UUID = CAMPAIGN,
) -> ev.LeadSold:
    return ev.LeadSold.new(
        **env(lead, when, account),
        payload=ev.LeadSoldPayload(
            **ref(lead, source, campaign),
            buyer_id=buyer,
            delivery_id=uuid.uuid5(lead, str(attempt)),
            price=Decimal(price),
            payout=None,  # as v1 sales were upcast: no payout recorded, none booked
        ),
    )


def unsold(
    lead: uuid.UUID, source: uuid.UUID, reason: ev.ExhaustionReason, when: dt.datetime
) -> ev.LeadUnsold:
    return ev.LeadUnsold.new(
        **env(lead, when), payload=ev.LeadUnsoldPayload(**ref(lead, source), reason=reason)
    )


def usage(
    lead: uuid.UUID,
    metric: ev.UsageMetric,
    when: dt.datetime,
    quantity: int = 1,
    account: uuid.UUID = ACCOUNT,
) -> ev.UsageIncremented:
    return ev.UsageIncremented.new(
        **env(lead, when, account),
        payload=ev.UsageIncrementedPayload(metric=metric, quantity=quantity, subject_id=lead),
    )


R, M = ev.DeliveryResult, ev.UsageMetric
# L1: sold to B1 at 10h. L2: received at 10h, rejected by B1, sold to B2 at 11h after one
# failed try. L3: B1 errs, unsold at 11h. L4: no buyer at 9h. L5: received on the last
# evening of March, sold a second into April (UTC).
HOUR_11 = [
    routed(L2, S1, B2, 2, "20.10", at(14, 11, 0, 10)),
    attempted(L2, S1, B2, 2, R.ERROR, at(14, 11, 0, 20), final=False),
    attempted(L2, S1, B2, 2, R.ACCEPTED, at(14, 11, 0, 40), try_number=2),
    sold(L2, S1, B2, 2, "20.10", at(14, 11, 1)),
    received(L3, S2, at(14, 11, 10)),
    routed(L3, S2, B1, 1, "15.00", at(14, 11, 10, 1)),
    attempted(L3, S2, B1, 1, R.ERROR, at(14, 11, 10, 30)),
    unsold(L3, S2, ev.ExhaustionReason.ALL_BUYERS_DECLINED, at(14, 11, 10, 31)),
    usage(L2, M.DELIVERY_ATTEMPTS, at(14, 11, 0, 40), quantity=3),
    usage(L2, M.LEADS_SOLD, at(14, 11, 1)),
    usage(L3, M.LEADS_RECEIVED, at(14, 11, 10)),
    usage(L3, M.DELIVERY_ATTEMPTS, at(14, 11, 10, 30)),
]
MONTH_END = [
    received(L5, S2, at(31, 23, 59, 58)),
    routed(L5, S2, B2, 1, "0.10", at(31, 23, 59, 59)),
    attempted(L5, S2, B2, 1, R.ACCEPTED, at(1, 0, 0, 0.5, month=4)),
    sold(L5, S2, B2, 1, "0.10", at(1, 0, 0, 1, month=4)),
    usage(L5, M.LEADS_RECEIVED, at(31, 23, 59, 58)),
    usage(L5, M.DELIVERY_ATTEMPTS, at(1, 0, 0, 0.5, month=4)),
    usage(L5, M.LEADS_SOLD, at(1, 0, 0, 1, month=4)),
]
HOUR_10 = [
    received(L1, S1, at(14, 10, 5)),
    routed(L1, S1, B1, 1, "12.35", at(14, 10, 5, 1)),
    attempted(L1, S1, B1, 1, R.ACCEPTED, at(14, 10, 5, 2)),
    sold(L1, S1, B1, 1, "12.35", at(14, 10, 5, 3)),
    received(L2, S1, at(14, 10, 58)),
    routed(L2, S1, B1, 1, "18.00", at(14, 10, 58, 1)),
    attempted(L2, S1, B1, 1, R.REJECTED, at(14, 10, 58, 2)),
    usage(L1, M.LEADS_RECEIVED, at(14, 10, 5)),
    usage(L1, M.DELIVERY_ATTEMPTS, at(14, 10, 5, 2)),
    usage(L1, M.LEADS_SOLD, at(14, 10, 5, 3)),
    usage(L2, M.LEADS_RECEIVED, at(14, 10, 58)),
]
HOUR_9 = [
    received(L4, S1, at(14, 9, 30)),
    ev.LeadRoutingExhausted.new(
        **env(L4, at(14, 9, 30, 1)),
        payload=ev.LeadRoutingExhaustedPayload(
            **ref(L4, S1), reason=ev.ExhaustionReason.NO_ELIGIBLE_BUYERS, attempts=0
        ),
    ),
    unsold(L4, S1, ev.ExhaustionReason.NO_ELIGIBLE_BUYERS, at(14, 9, 30, 2)),
    usage(L4, M.LEADS_RECEIVED, at(14, 9, 30)),
]
ANOTHER_ACCOUNT = [
    sold(L_OTHER, S1, B1, 1, "99.99", at(14, 10, 30), OTHER_ACCOUNT, OTHER_CAMPAIGN),
    usage(L_OTHER, M.LEADS_SOLD, at(14, 10, 30), account=OTHER_ACCOUNT),
]
# The same events again, as a retried producer or a replay would publish them.
DUPLICATES = [HOUR_10[3], HOUR_10[7], HOUR_10[4], HOUR_10[6], HOUR_11[7], HOUR_11[8], MONTH_END[3]]
# Later hours first, the earliest hour last, then the duplicates.
LOG: list[Event] = [*HOUR_11, *MONTH_END, *ANOTHER_ACCOUNT, *HOUR_10, *HOUR_9, *DUPLICATES]


def key_of(event: Event) -> uuid.UUID:
    return event.account_id if isinstance(event, ev.UsageIncremented) else event.correlation_id


@pytest.fixture(scope="module")
async def projected(infra: Infra, isolation: str) -> AsyncIterator[Projections]:
    """Both projections, once they have consumed and committed the whole log."""
    billing = settings_for(BillingSettings, infra, isolation, "billing")
    billing = billing.model_copy(update={"database_url": not_utc(billing.database_url)})
    analytics = settings_for(AnalyticsSettings, infra, isolation, "analytics")
    analytics = analytics.model_copy(update={"database_url": not_utc(analytics.database_url)})
    async with (
        hosted(create_billing(billing)) as (billing_client, billing_rt),
        hosted(create_analytics(analytics)) as (analytics_client, analytics_rt),
    ):
        await publish(
            infra.kafka_bootstrap, billing.kafka.topic_prefix, [(e, key_of(e)) for e in LOG]
        )
        for rt in (billing_rt, analytics_rt):
            await eventually(
                lambda rt=rt: caught_up(infra.kafka_bootstrap, rt),
                what=f"{rt.name} consumed the whole log",
            )
        yield Projections(billing_client, analytics_client)


# --- billing --------------------------------------------------------------------------------


async def statement(p: Projections, month: str, account: uuid.UUID = ACCOUNT) -> dict[str, Any]:
    r = await p.billing.get(
        f"/v1/accounts/{account}/statement", params={"month": month}, headers=OPERATOR
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_the_statement_counts_usage_and_revenue_once_to_the_cent_by_utc_month(
    projected: Projections,
) -> None:
    march = await statement(projected, "2025-03")
    assert march == {
        "account_id": str(ACCOUNT),
        "month": "2025-03",
        "usage": {"leads_received": 5, "delivery_attempts": 5, "leads_sold": 2},
        "sold_leads": 2,
        "revenue": "32.45",
    }
    assert Decimal(march["revenue"]) == Decimal("12.35") + Decimal("20.10")
    # L5 was sold one second into April (UTC): April's, not March's.
    april = await statement(projected, "2025-04")
    assert april == {
        "account_id": str(ACCOUNT),
        "month": "2025-04",
        "usage": {"delivery_attempts": 1, "leads_sold": 1},
        "sold_leads": 1,
        "revenue": "0.10",
    }
    february = await statement(projected, "2025-02")
    assert (february["usage"], february["sold_leads"], february["revenue"]) == ({}, 0, "0.00")
    other = await statement(projected, "2025-03", OTHER_ACCOUNT)
    assert (other["usage"], other["sold_leads"], other["revenue"]) == (
        {"leads_sold": 1},
        1,
        "99.99",
    )

    for bad in ("2025-13", "2025-3", "March"):
        r = await projected.billing.get(
            f"/v1/accounts/{ACCOUNT}/statement", params={"month": bad}, headers=OPERATOR
        )
        assert r.status_code == 422, f"{bad}: {r.text}"
    r = await projected.billing.get(
        f"/v1/accounts/{ACCOUNT}/statement", params={"month": "2025-03"}
    )
    assert r.status_code == 401


async def test_the_ledger_balances_to_zero_and_receivables_are_the_sold_prices(
    projected: Projections,
) -> None:
    r = await projected.billing.get(f"/v1/accounts/{ACCOUNT}/balances", headers=OPERATOR)
    assert r.status_code == 200, r.text
    balances = r.json()["balances"]
    assert balances == {
        f"account:{ACCOUNT}:lead_revenue": "-32.55",
        f"buyer:{B1}:receivable": "12.35",
        f"buyer:{B2}:receivable": "20.20",
    }
    amounts = [Decimal(v) for v in balances.values()]
    assert sum(amounts) == Decimal("0.00")
    sold_prices = [
        e.payload.price for e in LOG if isinstance(e, ev.LeadSold) and e.account_id == ACCOUNT
    ]
    distinct = {
        e.event_id: e.payload.price
        for e in LOG
        if isinstance(e, ev.LeadSold) and e.account_id == ACCOUNT
    }
    assert len(sold_prices) > len(distinct)  # the log does repeat sales
    receivable = sum(Decimal(v) for k, v in balances.items() if k.endswith(":receivable"))
    assert receivable == sum(distinct.values()) == Decimal("32.55")

    r = await projected.billing.get(f"/v1/accounts/{OTHER_ACCOUNT}/balances", headers=OPERATOR)
    assert r.json()["balances"] == {
        f"account:{OTHER_ACCOUNT}:lead_revenue": "-99.99",
        f"buyer:{B1}:receivable": "99.99",
    }


# --- analytics ------------------------------------------------------------------------------

ZERO = {
    "received": 0,
    "offered": 0,
    "sold": 0,
    "unsold": 0,
    "rejected": 0,
    "errors": 0,
    "revenue": "0.00",
}
EXPECTED_HOURS = [  # (hour, source, buyer or None for the lead-level row), counts
    (at(14, 9, 0), S1, None, {"received": 1, "unsold": 1}),
    (at(14, 10, 0), S1, None, {"received": 2, "sold": 1}),
    (at(14, 10, 0), S1, B1, {"offered": 2, "sold": 1, "rejected": 1, "revenue": "12.35"}),
    (at(14, 11, 0), S1, None, {"sold": 1}),
    (at(14, 11, 0), S1, B2, {"offered": 1, "sold": 1, "revenue": "20.10"}),
    (at(14, 11, 0), S2, None, {"received": 1, "unsold": 1}),
    (at(14, 11, 0), S2, B1, {"offered": 1, "errors": 1}),
    (at(31, 23, 0), S2, None, {"received": 1}),
    (at(31, 23, 0), S2, B2, {"offered": 1}),
    (at(1, 0, 0, month=4), S2, None, {"sold": 1}),
    (at(1, 0, 0, month=4), S2, B2, {"sold": 1, "revenue": "0.10"}),
]


def rows_as_expected(body: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The API's rows in the shape of EXPECTED_HOURS (hours as instants, zeros dropped)."""
    out = []
    for row in body:
        assert row["campaign_id"] == str(CAMPAIGN)
        counts = {k: v for k, v in row.items() if k in ZERO and v != ZERO[k]}
        buyer = uuid.UUID(row["buyer_id"]) if row["buyer_id"] else None
        out.append(
            (dt.datetime.fromisoformat(row["hour"]), uuid.UUID(row["source_id"]), buyer, counts)
        )
    return out


def by_hour(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return sorted(rows, key=lambda r: (r[0], str(r[1]), str(r[2] or "")))


async def test_hourly_stats_bucket_by_event_time_and_count_each_event_once(
    projected: Projections,
) -> None:
    r = await projected.analytics.get(
        "/v1/stats/hourly", params={"campaign_id": str(CAMPAIGN)}, headers=OPERATOR
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert by_hour(rows_as_expected(body)) == by_hour(EXPECTED_HOURS)
    # Money to the cent, as strings; zero revenue too.
    assert {row["revenue"] for row in body} == {"0.00", "12.35", "20.10", "0.10"}
    totals = {
        c: sum(int(row[c]) for row in body if row["buyer_id"] is None)
        for c in ("received", "sold", "unsold")
    }
    assert totals == {"received": 5, "sold": 3, "unsold": 2}  # five leads, each counted once
    assert sum(Decimal(row["revenue"]) for row in body) == Decimal("32.55")

    # A time window selects whole UTC hours: [10:00, 12:00) is the 10h and 11h buckets.
    r = await projected.analytics.get(
        "/v1/stats/hourly",
        headers=OPERATOR,
        params={
            "campaign_id": str(CAMPAIGN),
            "from": "2025-03-14T10:00:00Z",
            "to": "2025-03-14T12:00:00Z",
        },
    )
    assert r.status_code == 200, r.text
    window = [row for row in EXPECTED_HOURS if at(14, 10, 0) <= row[0] < at(14, 12, 0)]
    assert by_hour(rows_as_expected(r.json())) == by_hour(window)
    r = await projected.analytics.get(
        "/v1/stats/hourly",
        headers=OPERATOR,
        params={"campaign_id": str(CAMPAIGN), "buyer_id": str(B2)},
    )
    assert {(row["hour"][:13], row["sold"], row["revenue"]) for row in r.json()} == {
        ("2025-03-14T11", 1, "20.10"),
        ("2025-03-31T23", 0, "0.00"),
        ("2025-04-01T00", 1, "0.10"),
    }
    assert (await projected.analytics.get("/v1/stats/hourly")).status_code == 401
