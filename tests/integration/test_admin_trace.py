"""The lead trace names the reasons, in words and codes (real Kafka and PostgreSQL).

Lead events are published here as ingest, the auction, router and delivery would; the
buyers are configured through admin, so the trace can call them by name.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest
from lx_admin.main import create_service
from lx_admin.settings import AdminSettings
from lx_devstack.infra import Infra
from lx_platform.settings import PlatformSettings
from lx_schemas import Event
from lx_schemas import events as ev
from lx_schemas.rules import Payout

from tests.support.dns import StubDns
from tests.support.http import free_port
from tests.support.kafka import publish
from tests.support.services import OPERATOR, eventually, hosted, settings_for

DNS = StubDns({"buyer.example": ["93.184.216.34"]})
T0 = dt.datetime(2026, 3, 14, 9, 0, tzinfo=dt.UTC)
RC = ev.RejectionCode


@dataclass
class Story:
    client: httpx.AsyncClient
    buyers: dict[str, uuid.UUID]
    leads: dict[str, uuid.UUID]
    ping_id: uuid.UUID

    async def trace(self, lead: str) -> dict[str, Any]:
        r = await self.client.get(f"/v1/leads/{self.leads[lead]}/trace", headers=OPERATOR)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body


def the_log(
    account: uuid.UUID,
    campaign: uuid.UUID,
    source: uuid.UUID,
    buyers: dict[str, uuid.UUID],
    leads: dict[str, uuid.UUID],
    ping_id: uuid.UUID,
) -> list[tuple[Event, uuid.UUID]]:
    acme, zen = buyers["Acme"], buyers["Zen"]

    def env(key: uuid.UUID, seconds: float) -> dict[str, Any]:
        return {
            "account_id": account,
            "correlation_id": key,
            "producer": "test",
            "occurred_at": T0 + dt.timedelta(seconds=seconds),
        }

    def ref(lead: str) -> dict[str, Any]:
        return {"lead_id": leads[lead], "campaign_id": campaign, "source_id": source}

    content = ev.LeadContent(fields={"state": "CA"})
    refused = ev.LeadRejected.new(
        **env(leads["refused"], 0),
        payload=ev.LeadRejectedPayload(
            **ref("refused"),
            http_status=422,
            rejections=(
                ev.Rejection(code=RC.VALIDATION, detail="not an e-mail address", field="email"),
                ev.Rejection(code=RC.DUPLICATE, detail="seen within 30 days"),
            ),
        ),
    )
    unsold_why = (
        ev.Rejection(code=RC.FILTER, detail="filter 'CA or TX' failed: state is NY", buyer_id=acme),
        ev.Rejection(code=RC.SCHEDULE_CLOSED, detail="closed at 02:00 Tue", buyer_id=zen),
    )
    unsold = [
        ev.LeadReceived.new(
            **env(leads["unsold"], 1), payload=ev.LeadReceivedPayload(**ref("unsold"), lead=content)
        ),
        ev.LeadRoutingExhausted.new(
            **env(leads["unsold"], 2),
            payload=ev.LeadRoutingExhaustedPayload(
                **ref("unsold"),
                reason=ev.ExhaustionReason.NO_ELIGIBLE_BUYERS,
                attempts=0,
                rejections=unsold_why,
            ),
        ),
        ev.LeadUnsold.new(
            **env(leads["unsold"], 3),
            payload=ev.LeadUnsoldPayload(
                **ref("unsold"),
                reason=ev.ExhaustionReason.NO_ELIGIBLE_BUYERS,
                rejections=unsold_why,
            ),
        ),
    ]
    auction_ref = {"ping_id": ping_id, "campaign_id": campaign, "source_id": source}
    bids = (
        ev.Bid(buyer_id=acme, price=Decimal("50.00")),
        ev.Bid(buyer_id=zen, price=Decimal("42.00")),
    )
    auction: list[Event] = [
        ev.PingReceived.new(
            **env(ping_id, 4), payload=ev.PingReceivedPayload(**auction_ref, fields={"state": "CA"})
        ),
        ev.BuyerPinged.new(
            **env(ping_id, 4.1),
            payload=ev.BuyerPingedPayload(
                **auction_ref,
                buyer_id=acme,
                result=ev.PingResult.BID,
                price=Decimal("50.00"),
                latency_ms=80,
            ),
        ),
        ev.AuctionClosed.new(
            **env(ping_id, 4.5),
            payload=ev.AuctionClosedPayload(
                **auction_ref,
                bids=bids,
                payout=Decimal("30.00"),
                expires_at=T0 + dt.timedelta(minutes=2),
                duration_ms=412,
            ),
        ),
    ]
    d1, d2 = uuid.uuid4(), uuid.uuid4()
    routed = {
        "price": Decimal("50.00"),
        "payout": Payout(fixed=Decimal("30.00")),
        "lead": content,
        "ping_id": ping_id,
    }
    sold = [
        ev.LeadReceived.new(
            **env(leads["sold"], 5),
            payload=ev.LeadReceivedPayload(
                **ref("sold"),
                lead=content,
                ping_id=ping_id,
                bids=bids,
                promised_payout=Decimal("30.00"),
            ),
        ),
        ev.LeadRouted.new(
            **env(leads["sold"], 6),
            payload=ev.LeadRoutedPayload(
                **ref("sold"), buyer_id=acme, attempt=1, delivery_id=d1, **routed
            ),
        ),
        ev.DeliveryAttempted.new(
            **env(leads["sold"], 7),
            payload=ev.DeliveryAttemptedPayload(
                **ref("sold"),
                buyer_id=acme,
                delivery_id=d1,
                attempt=1,
                result=ev.DeliveryResult.REJECTED,
                http_status=200,
                latency_ms=120,
                reason="duplicate in our CRM",
                reason_code=RC.BUYER_REJECTED,
            ),
        ),
        ev.DeliveryAttempted.new(
            **env(leads["sold"], 8),
            payload=ev.DeliveryAttemptedPayload(
                **ref("sold"),
                buyer_id=zen,
                delivery_id=d2,
                attempt=2,
                result=ev.DeliveryResult.ACCEPTED,
                http_status=200,
                latency_ms=95,
                price=Decimal("42.00"),
                buyer_lead_id="ZEN-7781",
            ),
        ),
        ev.LeadSold.new(
            **env(leads["sold"], 9),
            payload=ev.LeadSoldPayload(
                **ref("sold"),
                buyer_id=zen,
                delivery_id=d2,
                price=Decimal("42.00"),
                payout=Decimal("30.00"),
                buyer_lead_id="ZEN-7781",
            ),
        ),
        ev.LeadReturned.new(
            **env(leads["sold"], 10),
            payload=ev.LeadReturnedPayload(
                **ref("sold"),
                buyer_id=zen,
                delivery_id=d2,
                return_id=uuid.uuid4(),
                price=Decimal("42.00"),
                payout=Decimal("30.00"),
                reason_code=ev.ReturnReason.INVALID_CONTACT,
                reason="wrong number",
                returned_by=f"buyer:{zen}",
            ),
        ),
    ]
    return [
        (refused, leads["refused"]),
        *[(e, leads["unsold"]) for e in unsold],
        *[(e, ping_id) for e in auction],
        *[(e, leads["sold"]) for e in sold],
    ]


@pytest.fixture(scope="module")
async def story(infra: Infra, isolation: str) -> AsyncIterator[Story]:
    nobody = PlatformSettings(
        delivery_url=f"http://127.0.0.1:{free_port()}", internal_timeout_s=0.5
    )
    settings = settings_for(AdminSettings, infra, isolation, "admin", platform=nobody)
    async with hosted(create_service(settings, resolver=DNS)) as (client, rt):

        async def created(url: str, body: Any) -> dict[str, Any]:
            r = await client.post(url, json=body, headers=OPERATOR)
            assert r.status_code == 201, r.text
            result: dict[str, Any] = r.json()
            return result

        account = await created("/v1/accounts", {"name": "Acme"})
        fields = [{"name": "state", "type": "us_state"}]
        campaign = await created(
            f"/v1/accounts/{account['account_id']}/campaigns",
            {"name": "C", "vertical": "solar", "fields": fields},
        )
        source = await created(f"/v1/campaigns/{campaign['campaign_id']}/sources", {"name": "Aff"})
        buyers = {}
        for name in ("Acme", "Zen"):
            b = await created(
                f"/v1/campaigns/{campaign['campaign_id']}/buyers",
                {"name": name, "endpoint_url": "https://buyer.example/", "price": "40.00"},
            )
            buyers[name] = uuid.UUID(b["buyer_id"])
        leads = {n: uuid.uuid4() for n in ("refused", "unsold", "sold")}
        ping_id = uuid.uuid4()
        log = the_log(
            uuid.UUID(account["account_id"]),
            uuid.UUID(campaign["campaign_id"]),
            uuid.UUID(source["source_id"]),
            buyers,
            leads,
            ping_id,
        )
        await publish(infra.kafka_bootstrap, settings.kafka.topic_prefix, log)
        (trace,) = [c for c in rt.consumers if c.group_id.endswith("admin-trace")]
        await eventually(lambda: _at_least(trace.consumed, len(log)), what="the log consumed")
        yield Story(client, buyers, leads, ping_id)


async def _at_least(value: int, n: int) -> bool:
    return value >= n


async def test_a_refused_lead_says_why_with_codes_and_fields(story: Story) -> None:
    trace = await story.trace("refused")
    assert trace["status"] == "rejected"
    why = trace["why"]
    assert why["codes"] == ["validation", "duplicate"]
    assert [(r["code"], r["field"]) for r in why["reasons"]] == [
        ("validation", "email"),
        ("duplicate", None),
    ]
    assert why["summary"] == (
        "refused at intake: not an e-mail address [email] (validation);"
        " seen within 30 days (duplicate)"
    )
    (event,) = trace["events"]
    assert event["summary"].startswith("refused at intake (HTTP 422)")


async def test_an_unsold_lead_names_each_buyer_and_its_reason(story: Story) -> None:
    trace = await story.trace("unsold")
    assert trace["status"] == "unsold"
    why = trace["why"]
    assert why["codes"] == ["filter", "schedule_closed"]
    assert [(r["buyer_name"], r["code"]) for r in why["reasons"]] == [
        ("Acme", "filter"),
        ("Zen", "schedule_closed"),
    ]
    assert why["summary"] == (
        "unsold: no buyer could take it: buyer 'Acme': filter 'CA or TX' failed: state is NY"
        " (filter); buyer 'Zen': closed at 02:00 Tue (schedule_closed)"
    )
    exhausted = next(e for e in trace["events"] if e["type"] == "LeadRoutingExhausted")
    assert "buyer 'Zen': closed at 02:00 Tue (schedule_closed)" in exhausted["summary"]


async def test_a_sold_posts_trace_tells_its_auction_its_rejections_its_sale_and_return(
    story: Story,
) -> None:
    trace = await story.trace("sold")
    assert trace["status"] == "returned"
    assert trace["why"] is None
    summaries = {e["type"]: e["summary"] for e in trace["events"]}
    assert summaries["LeadReceived"].endswith(f"as the post of auction {story.ping_id}")
    rejected, accepted = [e["summary"] for e in trace["events"] if e["type"] == "DeliveryAttempted"]
    assert rejected == (
        "buyer 'Acme' rejected it: duplicate in our CRM (buyer_rejected) (HTTP 200, 120 ms)"
    )
    assert accepted == "buyer 'Zen' accepted at $42.00 (HTTP 200, 95 ms, its lead id ZEN-7781)"
    assert summaries["LeadSold"] == "sold to buyer 'Zen' at $42.00; the source earns $30.00"
    assert summaries["LeadReturned"] == (
        f"returned by buyer:{story.buyers['Zen']} (invalid_contact: wrong number);"
        " buyer 'Zen' credited $42.00, $30.00 clawed back from the source"
    )
    attempt = next(e for e in trace["events"] if e["type"] == "DeliveryAttempted")
    assert attempt["payload"]["reason_code"] == "buyer_rejected"

    auction = trace["auction"]
    assert auction["ping_id"] == str(story.ping_id)
    assert [e["type"] for e in auction["events"]] == [
        "PingReceived",
        "BuyerPinged",
        "AuctionClosed",
    ]
    assert auction["events"][1]["summary"] == "buyer 'Acme' bid $50.00 in 80 ms"
    assert auction["events"][2]["summary"] == (
        "auction closed in 412 ms: 2 bid(s), best $50.00 by buyer 'Acme';"
        " the source was promised $30.00"
    )
