"""lxctl projection rebuild and verify, against a live projection service taking traffic."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from lx_analytics.main import create_service as create_analytics
from lx_analytics.settings import AnalyticsSettings
from lx_billing.main import create_service as create_billing
from lx_billing.settings import BillingSettings
from lx_devstack.infra import Infra
from lx_platform.runtime import Runtime
from lx_platform.settings import ServiceSettings
from lx_schemas import Event
from lx_schemas import events as ev
from lx_schemas.rules import Payout
from lx_sre.cli import app as lxctl
from lx_sre.projections import PROJECTIONS, Shadow, rebuild_projection, verify_projection
from sqlalchemy import text
from typer.testing import CliRunner

from tests.support.kafka import publish
from tests.support.services import OPERATOR, eventually, hosted, settings_for

ACCOUNT, CAMPAIGN = uuid.uuid4(), uuid.uuid4()
SOURCES = [uuid.uuid4() for _ in range(3)]
BUYERS = [uuid.uuid4() for _ in range(2)]
T0 = dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC)
# Of a lead's 5 events, analytics reads all but the usage; billing usage, attempt, outcome.
ANALYTICS_PER_LEAD, BILLING_PER_LEAD = 4, 3


def lead_story(n: int) -> list[tuple[Event, uuid.UUID]]:
    """One lead's events: received, offered, rejected by one buyer, sold by the other."""
    lead, at = uuid.uuid4(), T0 + dt.timedelta(minutes=7 * n)
    ref = {"lead_id": lead, "campaign_id": CAMPAIGN, "source_id": SOURCES[n % 3]}
    env = {"account_id": ACCOUNT, "correlation_id": lead, "producer": "test", "occurred_at": at}
    first, second = BUYERS[n % 2], BUYERS[(n + 1) % 2]
    price = Decimal("10.00") + n % 7
    stories: list[Event] = [
        ev.LeadReceived.new(
            **env, payload=ev.LeadReceivedPayload(**ref, lead=ev.LeadContent(fields={}))
        ),
        ev.UsageIncremented.new(
            **env,
            payload=ev.UsageIncrementedPayload(
                metric=ev.UsageMetric.LEADS_RECEIVED, subject_id=lead
            ),
        ),
        ev.LeadRouted.new(
            **env,
            payload=ev.LeadRoutedPayload(
                **ref,
                buyer_id=first,
                attempt=1,
                delivery_id=uuid.uuid4(),
                price=price,
                payout=Payout(fixed=Decimal("0.00")),
                lead=ev.LeadContent(fields={}),
            ),
        ),
        ev.DeliveryAttempted.new(
            **env,
            payload=ev.DeliveryAttemptedPayload(
                **ref,
                buyer_id=first,
                delivery_id=uuid.uuid4(),
                attempt=1,
                result=ev.DeliveryResult.REJECTED,
                latency_ms=3.0,
            ),
        ),
    ]
    if n % 4:
        stories.append(
            ev.LeadSold.new(
                **env,
                payload=ev.LeadSoldPayload(
                    **ref,
                    buyer_id=second,
                    delivery_id=uuid.uuid4(),
                    price=price,
                    payout=Decimal("5.00"),
                ),
            )
        )
    else:
        stories.append(
            ev.LeadUnsold.new(
                **env,
                payload=ev.LeadUnsoldPayload(**ref, reason=ev.ExhaustionReason.ALL_BUYERS_DECLINED),
            )
        )
    return [(e, ACCOUNT if isinstance(e, ev.UsageIncremented) else lead) for e in stories]


async def send_leads(infra: Infra, prefix: str, numbers: range) -> int:
    events = [item for n in numbers for item in lead_story(n)]
    await publish(infra.kafka_bootstrap, prefix, events)
    return len(events)


async def processed(rt: Runtime) -> int:
    async with rt.db.begin() as conn:
        return int(await conn.scalar(text("select count(*) from processed_events")) or 0)


@pytest.fixture(scope="module")
async def analytics(infra: Infra, isolation: str) -> AsyncIterator[tuple[Any, Runtime]]:
    settings = settings_for(AnalyticsSettings, infra, isolation, "analytics")
    async with hosted(create_analytics(settings)) as running:
        yield running


@pytest.fixture(scope="module")
async def billing(infra: Infra, isolation: str) -> AsyncIterator[tuple[Any, Runtime]]:
    # Topics of its own: the analytics tests' traffic is not billing's.
    settings = settings_for(BillingSettings, infra, f"{isolation}b", "billing")
    async with hosted(create_billing(settings)) as running:
        yield running


async def stats(client: Any) -> list[dict[str, Any]]:
    r = await client.get(
        "/v1/stats/hourly", params={"campaign_id": str(CAMPAIGN)}, headers=OPERATOR
    )
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()
    return rows


async def settle(rt: Runtime, expected: int) -> None:
    async def done() -> bool:
        return await processed(rt) >= expected

    await eventually(done, within=60, what=f"{expected} events processed")


async def test_a_rebuild_during_live_traffic_stays_readable_and_ends_equal_to_verify(
    analytics: tuple[Any, Runtime], infra: Infra
) -> None:
    client, rt = analytics
    live: ServiceSettings = rt.settings
    await send_leads(infra, live.kafka.topic_prefix, range(0, 300))
    await settle(rt, ANALYTICS_PER_LEAD * 300)

    reads: list[int] = []
    stop = asyncio.Event()

    async def keep_reading() -> None:
        while not stop.is_set():
            reads.append(len(await stats(client)))  # fails the test on any non-200
            await asyncio.sleep(0.01)

    async def keep_sending() -> None:
        for start in range(300, 600, 50):
            await send_leads(infra, live.kafka.topic_prefix, range(start, start + 50))
            await asyncio.sleep(0.05)

    reader = asyncio.create_task(keep_reading())
    sender = asyncio.create_task(keep_sending())
    result = await rebuild_projection("analytics", fresh=True, live=live)
    await sender
    stop.set()
    await reader

    assert result.applied >= ANALYTICS_PER_LEAD * 300  # at least the log before the traffic
    assert len(reads) > 5 and min(reads) > 0  # the projection answered all along
    await settle(rt, ANALYTICS_PER_LEAD * 600)
    _, differences = await verify_projection("analytics", live=live)
    assert differences == []
    rows = await stats(client)
    lead_rows = [r for r in rows if r["buyer_id"] is None]
    assert sum(r["received"] for r in lead_rows) == 600
    assert sum(r["sold"] for r in lead_rows) == sum(1 for n in range(600) if n % 4)


async def test_verify_finds_a_row_changed_by_hand_and_exits_non_zero(
    analytics: tuple[Any, Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, rt = analytics
    live = rt.settings
    async with rt.db.begin() as conn:
        changed = (
            await conn.execute(
                text(
                    "update hourly_stats set received = received + 5 where ctid ="
                    " (select ctid from hourly_stats where received > 0 limit 1)"
                    " returning hour, source_id"
                )
            )
        ).one()
    _, differences = await verify_projection("analytics", live=live)
    (diff,) = differences
    assert diff.table == "hourly_stats"
    pairs = zip(diff.only_live, diff.only_rebuilt, strict=True)
    assert [(r["source_id"], r["received"] - o["received"]) for r, o in pairs] == [
        (str(changed.source_id), 5)
    ]

    for key, value in _env_for(live).items():
        monkeypatch.setenv(key, value)
    # The command runs its own event loop, as it does from a shell.
    result = await asyncio.to_thread(
        CliRunner().invoke, lxctl, ["projection", "verify", "analytics"]
    )
    assert result.exit_code == 1, result.output
    assert "only_live\thourly_stats" in result.output
    assert result.output.strip().splitlines()[-1].startswith("differs\tanalytics")

    # Repair by rebuilding: verify is clean again.
    await rebuild_projection("analytics", live=live)
    assert (await verify_projection("analytics", live=live))[1] == []


async def test_an_interrupted_rebuild_resumes_where_its_shadow_stopped(
    billing: tuple[Any, Runtime], infra: Infra
) -> None:
    client, rt = billing
    live = rt.settings
    sent = await send_leads(infra, live.kafka.topic_prefix, range(0, 200))
    assert sent == 5 * 200
    await settle(rt, BILLING_PER_LEAD * 200)
    before = await _billing_view(client)

    # A first run that "dies" half way: its shadow holds half the log and its positions.
    shadow = Shadow(PROJECTIONS["billing"], live, schema="lx_rebuild_billing")
    try:
        await shadow.create(fresh=True)
        ends = await shadow.log_ends()
        await shadow.catch_up({tp: end // 2 for tp, end in ends.items()})
        halfway = sum((await shadow.positions()).values())
    finally:
        await shadow.close()
    assert 0 < halfway < sum(ends.values())

    resumed = await rebuild_projection("billing", live=live)
    assert resumed.extra["resumed"] is True
    assert resumed.records == sum(ends.values()) - halfway  # only the rest was read
    assert await _billing_view(client) == before
    assert (await verify_projection("billing", live=live))[1] == []


async def _billing_view(client: Any) -> dict[str, Any]:
    statement = await client.get(
        f"/v1/accounts/{ACCOUNT}/statement", params={"month": "2026-11"}, headers=OPERATOR
    )
    balances = await client.get(f"/v1/accounts/{ACCOUNT}/balances", headers=OPERATOR)
    return {"statement": statement.json(), "balances": balances.json()}


def _env_for(settings: ServiceSettings) -> dict[str, str]:
    return {
        "LX_ANALYTICS_DATABASE_URL": settings.database_url,
        "LX_KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "LX_KAFKA_TOPIC_PREFIX": settings.kafka.topic_prefix,
    }
