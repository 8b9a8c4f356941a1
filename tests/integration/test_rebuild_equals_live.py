"""Rebuild = live: billing and analytics answer exactly as before after being rebuilt.

One log with sales, a return, buyer caps (routing exhausted by buyer_cap), retries (a
non-final attempt, then the final one), a ping-post auction, a refused duplicate post,
the same events published twice, and hours published out of order. The live services
consume it; every query answer is recorded; then both projections are rebuilt twice —
by ``lxctl projection rebuild`` (a shadow swapped in), and from nothing (fresh databases,
new consumer groups, the live services replaying the whole log) — and each answer must
be identical. Billing's queries are every GET of its API about an account, whatever it
offers when this runs.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

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
from lx_sre.projections import rebuild_projection

from tests.support.kafka import publish
from tests.support.services import OPERATOR, eventually, hosted, settings_for
from tests.support.settle import caught_up

ACCOUNT, CAMPAIGN = uuid.uuid4(), uuid.uuid4()
S1, S2, B1, B2, B3 = (uuid.uuid4() for _ in range(5))
L1, L2, L3, L4, L5, PING = (uuid.uuid4() for _ in range(6))
R = ev.DeliveryResult
DAY = dt.datetime(2025, 5, 14, tzinfo=dt.UTC)


def at(hour: int, minute: int = 0, second: int = 0, days: int = 0) -> dt.datetime:
    return DAY + dt.timedelta(days=days, hours=hour, minutes=minute, seconds=second)


def env(lead: uuid.UUID, when: dt.datetime) -> dict[str, Any]:
    return {"account_id": ACCOUNT, "correlation_id": lead, "producer": "test", "occurred_at": when}


def ref(lead: uuid.UUID, source: uuid.UUID = S1) -> dict[str, Any]:
    return {"lead_id": lead, "campaign_id": CAMPAIGN, "source_id": source}


def received(lead: uuid.UUID, when: dt.datetime, **extra: Any) -> ev.LeadReceived:
    return ev.LeadReceived.new(
        **env(lead, when),
        payload=ev.LeadReceivedPayload(**ref(lead), lead=ev.LeadContent(fields={}), **extra),
    )


def usage(lead: uuid.UUID, metric: ev.UsageMetric, when: dt.datetime) -> ev.UsageIncremented:
    return ev.UsageIncremented.new(
        **env(lead, when), payload=ev.UsageIncrementedPayload(metric=metric, subject_id=lead)
    )


def routed(lead: uuid.UUID, buyer: uuid.UUID, attempt: int, price: str, when: dt.datetime) -> Event:
    return ev.LeadRouted.new(
        **env(lead, when),
        payload=ev.LeadRoutedPayload(
            **ref(lead),
            buyer_id=buyer,
            attempt=attempt,
            delivery_id=uuid.uuid5(lead, str(attempt)),
            price=Decimal(price),
            payout=Payout(percent=Decimal("50.00")),
            lead=ev.LeadContent(fields={}),
        ),
    )


def attempted(
    lead: uuid.UUID,
    buyer: uuid.UUID,
    attempt: int,
    result: ev.DeliveryResult,
    when: dt.datetime,
    latency_ms: float,
    *,
    try_number: int = 1,
    final: bool = True,
) -> Event:
    code = {R.REJECTED: ev.RejectionCode.BUYER_REJECTED, R.ERROR: ev.RejectionCode.BUYER_ERROR}
    return ev.DeliveryAttempted.new(
        **env(lead, when),
        payload=ev.DeliveryAttemptedPayload(
            **ref(lead),
            buyer_id=buyer,
            delivery_id=uuid.uuid5(lead, str(attempt)),
            attempt=attempt,
            try_number=try_number,
            final=final,
            result=result,
            latency_ms=latency_ms,
            reason_code=code.get(result),
        ),
    )


def sold(
    lead: uuid.UUID, buyer: uuid.UUID, attempt: int, price: str, payout: str, when: dt.datetime
) -> ev.LeadSold:
    return ev.LeadSold.new(
        **env(lead, when),
        payload=ev.LeadSoldPayload(
            **ref(lead),
            buyer_id=buyer,
            delivery_id=uuid.uuid5(lead, str(attempt)),
            price=Decimal(price),
            payout=Decimal(payout),
        ),
    )


M = ev.UsageMetric
CAPPED = (
    ev.Rejection(code=ev.RejectionCode.BUYER_CAP, detail="daily cap 10 reached", buyer_id=B1),
    ev.Rejection(code=ev.RejectionCode.BUYER_CAP, detail="hourly cap 2 reached", buyer_id=B2),
)
L1_SALE = sold(L1, B1, 1, "25.00", "12.50", at(10, 1, 5))
# L1: an error retried, then accepted and sold at 10h; returned two days later.
LEAD_1 = [
    received(L1, at(10, 1)),
    usage(L1, M.LEADS_RECEIVED, at(10, 1)),
    routed(L1, B1, 1, "25.00", at(10, 1, 1)),
    attempted(L1, B1, 1, R.ERROR, at(10, 1, 2), 30.0, final=False),
    attempted(L1, B1, 1, R.ACCEPTED, at(10, 1, 4), 45.0, try_number=2),
    usage(L1, M.DELIVERY_ATTEMPTS, at(10, 1, 4)),
    L1_SALE,
    usage(L1, M.LEADS_SOLD, at(10, 1, 5)),
]
RETURN = ev.LeadReturned.new(
    **env(L1, at(9, days=2)),
    payload=ev.LeadReturnedPayload(
        **ref(L1),
        buyer_id=B1,
        delivery_id=L1_SALE.payload.delivery_id,
        return_id=uuid.uuid4(),
        price=Decimal("25.00"),
        payout=Decimal("12.50"),
        reason_code=ev.ReturnReason.INVALID_CONTACT,
        returned_by=f"buyer:{B1}",
    ),
)
# L2: every buyer at its cap: routing exhausted, unsold.
L2_EXHAUSTED = ev.LeadRoutingExhausted.new(
    **env(L2, at(10, 30, 1)),
    payload=ev.LeadRoutingExhaustedPayload(
        **ref(L2), reason=ev.ExhaustionReason.NO_ELIGIBLE_BUYERS, attempts=0, rejections=CAPPED
    ),
)
LEAD_2 = [
    received(L2, at(10, 30)),
    usage(L2, M.LEADS_RECEIVED, at(10, 30)),
    L2_EXHAUSTED,
    ev.LeadUnsold.new(
        **env(L2, at(10, 30, 2)),
        payload=ev.LeadUnsoldPayload(
            **ref(L2), reason=ev.ExhaustionReason.NO_ELIGIBLE_BUYERS, rejections=CAPPED
        ),
    ),
]
# L3: pinged at 11h, B2 bids, B3 times out; the post is sold to B2.
PREF = {"ping_id": PING, "campaign_id": CAMPAIGN, "source_id": S1}
BID = ev.BuyerPinged.new(
    **env(PING, at(11, 0, 1)),
    payload=ev.BuyerPingedPayload(
        **PREF, buyer_id=B2, result=ev.PingResult.BID, price=Decimal("12.00"), latency_ms=80.0
    ),
)
LEAD_3 = [
    ev.PingReceived.new(
        **env(PING, at(11)), payload=ev.PingReceivedPayload(**PREF, fields={"state": "CA"})
    ),
    BID,
    ev.BuyerPinged.new(
        **env(PING, at(11, 0, 2)),
        payload=ev.BuyerPingedPayload(
            **PREF, buyer_id=B3, result=ev.PingResult.TIMEOUT, latency_ms=1000.0
        ),
    ),
    ev.AuctionClosed.new(
        **env(PING, at(11, 0, 2)),
        payload=ev.AuctionClosedPayload(
            **PREF,
            bids=(ev.Bid(buyer_id=B2, price=Decimal("12.00")),),
            payout=Decimal("8.00"),
            expires_at=at(11, 5),
            duration_ms=1000.0,
        ),
    ),
    received(L3, at(11, 1), ping_id=PING, bids=(ev.Bid(buyer_id=B2, price=Decimal("12.00")),)),
    usage(L3, M.LEADS_RECEIVED, at(11, 1)),
    routed(L3, B2, 1, "12.00", at(11, 1, 1)),
    attempted(L3, B2, 1, R.ACCEPTED, at(11, 1, 2), 60.0),
    usage(L3, M.DELIVERY_ATTEMPTS, at(11, 1, 2)),
    sold(L3, B2, 1, "12.00", "8.00", at(11, 1, 3)),
    usage(L3, M.LEADS_SOLD, at(11, 1, 3)),
]
# L4: a duplicate post from S2, refused at ingest.
LEAD_4 = [
    ev.LeadRejected.new(
        **env(L4, at(11, 40)),
        payload=ev.LeadRejectedPayload(
            **ref(L4, S2),
            http_status=409,
            rejections=(ev.Rejection(code=ev.RejectionCode.DUPLICATE, detail="email"),),
        ),
    )
]
# L5: B3 rejects it, B1 buys it at 12h (the hour's events published newest first).
LEAD_5 = [
    received(L5, at(12, 10)),
    usage(L5, M.LEADS_RECEIVED, at(12, 10)),
    routed(L5, B3, 1, "40.00", at(12, 10, 1)),
    attempted(L5, B3, 1, R.REJECTED, at(12, 10, 2), 250.0),
    routed(L5, B1, 2, "40.00", at(12, 10, 3)),
    attempted(L5, B1, 2, R.ACCEPTED, at(12, 10, 4), 20.0),
    usage(L5, M.DELIVERY_ATTEMPTS, at(12, 10, 4)),
    sold(L5, B1, 2, "40.00", "20.00", at(12, 10, 5)),
    usage(L5, M.LEADS_SOLD, at(12, 10, 5)),
]
# The same events again (same ids), as a retried producer or a replay would publish them.
DUPLICATES = [L1_SALE, LEAD_1[4], L2_EXHAUSTED, BID, RETURN, LEAD_5[-1], LEAD_5[0]]
LOG: list[Event] = [
    *reversed(LEAD_5),
    RETURN,
    *LEAD_3,
    *LEAD_2,
    *LEAD_1,
    *LEAD_4,
    *DUPLICATES,
]


def key_of(event: Event) -> uuid.UUID:
    return event.account_id if isinstance(event, ev.UsageIncremented) else event.correlation_id


# --- the services and their answers ---------------------------------------------------------


def report_queries() -> list[dict[str, Any]]:
    span = {"from": "2025-05-14T00:00:00Z", "to": "2025-05-17T00:00:00Z"}
    queries: list[dict[str, Any]] = []
    for granularity in ("hour", "day", "all"):
        for group_by in ([], ["campaign"], ["source"], ["buyer"], ["campaign", "source", "buyer"]):
            queries.append({**span, "granularity": granularity, "group_by": group_by})
    queries += [
        {**span, "granularity": "all", "buyer_id": str(B1)},
        {**span, "granularity": "day", "source_id": str(S2), "group_by": ["buyer"]},
        {**span, "granularity": "hour", "campaign_id": str(CAMPAIGN), "buyer_id": str(B2)},
        {"from": "2025-05-14T11:00:00Z", "to": "2025-05-14T12:00:00Z", "granularity": "all"},
    ]
    return queries


async def billing_answers(client: httpx.AsyncClient) -> dict[str, Any]:
    """Every GET of billing's API about one account that needs no other identifier."""
    spec = (await client.get("/openapi.json")).json()
    answers: dict[str, Any] = {}
    for path, methods in sorted(spec["paths"].items()):
        get = methods.get("get")
        if get is None or not path.startswith("/v1/") or "{account_id}" not in path:
            continue
        params = get.get("parameters", [])
        path_params = {p["name"] for p in params if p["in"] == "path"}
        if path_params != {"account_id"}:
            continue
        required = {p["name"] for p in params if p["in"] == "query" and p.get("required")}
        months = ["2025-05", "2025-06"] if "month" in required else [None]
        if required - {"month"}:
            continue
        for month in months:
            url = path.replace("{account_id}", str(ACCOUNT))
            r = await client.get(url, params={"month": month} if month else {}, headers=OPERATOR)
            answers[f"{url}?month={month}"] = (r.status_code, r.text)
    return answers


async def answers(analytics: httpx.AsyncClient, billing: httpx.AsyncClient) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for q in report_queries():
        r = await analytics.get("/v1/reports", params=q, headers=OPERATOR)
        assert r.status_code == 200, r.text
        out[f"reports {sorted(q.items())}"] = r.json()
    r = await analytics.get(
        "/v1/stats/hourly", params={"campaign_id": str(CAMPAIGN)}, headers=OPERATOR
    )
    out["stats/hourly"] = r.json()
    r = await analytics.get("/v1/exports", headers=OPERATOR)
    out["exports"] = r.json()
    out.update(await billing_answers(billing))
    return out


@pytest.fixture(scope="module")
async def live_answers(
    infra: Infra, isolation: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[dict[str, Any], BillingSettings, AnalyticsSettings]]:
    folder: Path = tmp_path_factory.mktemp("exports")
    billing = settings_for(BillingSettings, infra, isolation, "billing")
    analytics = settings_for(
        AnalyticsSettings,
        infra,
        isolation,
        "analytics",
        export_folder=folder,
        exports_enabled=False,
    )
    async with (
        hosted(create_billing(billing)) as (billing_client, billing_rt),
        hosted(create_analytics(analytics)) as (analytics_client, analytics_rt),
    ):
        r = await analytics_client.post(
            "/v1/exports",
            headers=OPERATOR,
            json={
                "name": "daily by buyer",
                "query": {"granularity": "day", "group_by": ["buyer"], "window_hours": 24},
                "every_hours": 24,
                "retention_days": 7,
                "configured_by": "operator:dana",
            },
        )
        assert r.status_code == 202, r.text
        await publish(
            infra.kafka_bootstrap, billing.kafka.topic_prefix, [(e, key_of(e)) for e in LOG]
        )

        async def exported() -> bool:
            r = await analytics_client.get("/v1/exports", headers=OPERATOR)
            return bool(r.json())

        await eventually(exported, what="the export projected")
        for rt in (billing_rt, analytics_rt):
            await eventually(
                lambda rt=rt: caught_up(infra.kafka_bootstrap, rt),
                within=60,
                what=f"{rt.name} consumed the whole log",
            )
        before = await answers(analytics_client, billing_client)

        # 1. lxctl projection rebuild: a shadow built from the log, swapped in.
        await rebuild_projection("analytics", fresh=True, live=analytics_rt.settings)
        await rebuild_projection("billing", fresh=True, live=billing_rt.settings)
        rebuilt = await answers(analytics_client, billing_client)
        assert rebuilt == before
    yield before, billing, analytics


async def test_the_live_reports_count_each_event_once_to_the_cent(
    live_answers: tuple[dict[str, Any], BillingSettings, AnalyticsSettings],
) -> None:
    before, _, _ = live_answers
    billing = {k: v for k, v in before.items() if k.startswith("/v1/accounts/")}
    assert any("/statement" in k for k in billing) and any("/balances" in k for k in billing)
    assert all(status == 200 for status, _ in billing.values()), billing
    span = {"from": "2025-05-14T00:00:00Z", "to": "2025-05-17T00:00:00Z"}
    (total,) = before[f"reports {sorted({**span, 'granularity': 'all', 'group_by': []}.items())}"][
        "rows"
    ]
    assert {k: total[k] for k in ("received", "accepted", "rejected", "duplicates")} == {
        "received": 5,
        "accepted": 4,
        "rejected": 1,
        "duplicates": 1,
    }
    assert total["rejections"] == {"buyer_cap": 2, "duplicate": 1}
    assert (total["pings"], total["posts"], total["ping_to_post_ratio"]) == (1, 1, 1.0)
    assert (total["auctions"], total["bids"], total["won"]) == (1, 1, 1)
    assert (total["offered"], total["sold"], total["unsold"], total["returned"]) == (4, 3, 1, 1)
    # Revenue: 25.00 + 12.00 + 40.00 sold, less the 25.00 returned; payouts likewise.
    assert (total["gross_revenue"], total["revenue"], total["payout"], total["margin"]) == (
        "77.00",
        "52.00",
        "28.00",
        "24.00",
    )
    assert total["responses"] == 7  # 5 post tries (the retried error too) and 2 pings
    assert total["latency_p50_ms"] >= 60.0 and total["latency_p99_ms"] >= 1000.0

    by_buyer = before[
        f"reports {sorted({**span, 'granularity': 'all', 'group_by': ['buyer']}.items())}"
    ]["rows"]
    b1 = next(r for r in by_buyer if r["buyer_id"] == str(B1))
    assert (b1["sold"], b1["returned"], b1["revenue"], b1["rejections"]) == (
        2,
        1,
        "40.00",
        {"buyer_cap": 1},
    )
    lead_level = next(r for r in by_buyer if r["buyer_id"] is None)
    assert (lead_level["received"], lead_level["unsold"], lead_level["sold"]) == (5, 1, 0)


async def test_a_rebuild_from_nothing_answers_every_query_exactly_as_live_did(
    live_answers: tuple[dict[str, Any], BillingSettings, AnalyticsSettings], infra: Infra
) -> None:
    before, billing, analytics = live_answers
    # 2. Both projections dropped: fresh databases, consumer groups that start at the log's
    # beginning; the services replay the whole log as they consume it live.
    tag = f"{uuid.uuid4().hex[:6]}"
    fresh_billing = billing.model_copy(
        update={
            "database_url": _fresh_database(infra, f"{tag}_billing"),
            "consumer_group": f"billing-{tag}",
        }
    )
    fresh_analytics = analytics.model_copy(
        update={
            "database_url": _fresh_database(infra, f"{tag}_analytics"),
            "consumer_group": f"analytics-{tag}",
        }
    )
    async with (
        hosted(create_billing(fresh_billing)) as (billing_client, billing_rt),
        hosted(create_analytics(fresh_analytics)) as (analytics_client, analytics_rt),
    ):
        for rt in (billing_rt, analytics_rt):
            await eventually(
                lambda rt=rt: caught_up(infra.kafka_bootstrap, rt),
                within=60,
                what=f"{rt.name} replayed the whole log",
            )
        replayed = await answers(analytics_client, billing_client)
    assert replayed.keys() == before.keys()
    for query, answer in before.items():
        assert replayed[query] == answer, query


def _fresh_database(infra: Infra, name: str) -> str:
    infra.create_database(name)
    return infra.dsn(name)
