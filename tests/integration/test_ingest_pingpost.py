"""Ping-post at ingest, against the real ingest, Kafka and PostgreSQL, and a stand-in
auction service on loopback (real HTTP) that keeps to the auction's internal contract."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from lx_devstack.infra import Infra
from lx_platform.settings import PlatformSettings
from lx_schemas import Event
from lx_schemas import events as ev
from lx_schemas.rules import PingPost, SourceCap, SourceCapPeriod, SourceControls
from lx_schemas.topics import LEAD_RECEIVED

from tests.support.ingest import LEAD, Service, Source, configure, running_ingest
from tests.support.ingest_auction import Plan, StubAuction, serving_stub_auction
from tests.support.services import eventually

PING = {"state": "ca", "zip": "94105-1234", "loan_amount": "250000"}
ENABLED = PingPost(enabled=True, auction_ms=200, ttl_s=60)


@pytest.fixture(scope="module")
def auction() -> Iterator[StubAuction]:
    with serving_stub_auction() as stub:
        yield stub


@pytest.fixture(autouse=True)
def _fresh_plan(auction: StubAuction) -> None:
    auction.next = Plan()


@pytest.fixture(scope="module")
async def ingest(infra: Infra, isolation: str, auction: StubAuction) -> AsyncIterator[Service]:
    platform = PlatformSettings(auction_url=auction.url)
    async with running_ingest(infra, isolation, platform=platform, auction_margin_ms=300) as svc:
        yield svc


async def ping(svc: Service, src: Source, body: Any = PING) -> httpx.Response:
    return await svc.client.post("/v1/pings", json=body, headers=src.auth)


async def post(
    svc: Service, src: Source, ping_id: Any, body: Any = LEAD, **headers: str
) -> httpx.Response:
    return await svc.client.post(
        f"/v1/pings/{ping_id}/post", json=body, headers={**src.auth, **headers}
    )


async def received(svc: Service, src: Source) -> list[ev.LeadReceived]:
    return [
        e
        for e in await svc.events_of(LEAD_RECEIVED, src.account_id)
        if isinstance(e, ev.LeadReceived)
    ]


def asked_for(auction: StubAuction, ping_id: str) -> list[dict[str, Any]]:
    return [a for a in auction.asked if a["ping_id"] == ping_id]


# --- pings ----------------------------------------------------------------------------------


async def test_a_ping_is_answered_with_the_auctions_price_and_carries_no_pii(
    ingest: Service, auction: StubAuction
) -> None:
    (src,) = await configure(ingest, ping_post=ENABLED)

    r = await ping(ingest, src)

    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["outcome"] == "bid"
    assert Decimal(answer["price"]) == Decimal("12.34")
    assert answer["expires_at"]
    (asked,) = asked_for(auction, answer["ping_id"])
    assert asked == {
        "ping_id": answer["ping_id"],
        "account_id": str(src.account_id),
        "campaign_id": str(src.campaign_id),
        "source_id": str(src.source_id),
        "fields": {"state": "CA", "zip": "94105", "loan_amount": 250000},
    }

    auction.next = Plan(outcome="no_bid", payout=None)
    nothing = await ping(ingest, src)
    assert nothing.status_code == 200, nothing.text
    assert (nothing.json()["outcome"], nothing.json()["price"]) == ("no_bid", None)


async def test_a_ping_is_refused_before_the_auction_when_it_cannot_be_run(
    ingest: Service, auction: StubAuction
) -> None:
    (src,) = await configure(ingest, ping_post=ENABLED)
    (direct_only,) = await configure(ingest)
    asked = len(auction.asked)

    pii = await ping(ingest, src, {**PING, "email": "ada@example.com", "phone": "4155550132"})
    assert pii.status_code == 422, pii.text
    error = pii.json()["error"]
    assert (error["code"], error["field"]) == ("pii_in_ping", "email")
    assert {(e["field"], e["code"]) for e in error["errors"]} == {
        ("email", "pii_in_ping"),
        ("phone", "pii_in_ping"),
    }
    invalid = await ping(ingest, src, {"zip": "9410"})
    assert invalid.status_code == 422, invalid.text
    assert {(e["field"], e["code"]) for e in invalid.json()["error"]["errors"]} == {
        ("state", "required"),
        ("zip", "invalid_zip"),
    }
    disabled = await ping(ingest, direct_only)
    assert disabled.status_code == 409, disabled.text
    assert disabled.json()["error"]["code"] == "ping_post_disabled"
    assert len(auction.asked) == asked  # none of these reached the auction


async def test_an_auction_that_does_not_answer_in_time_is_503_with_retry_after(
    ingest: Service, auction: StubAuction
) -> None:
    (src,) = await configure(ingest, ping_post=PingPost(enabled=True, auction_ms=50))
    # 50 ms of auction and 300 ms of margin: an answer after 2 s is too late.
    auction.next = Plan(delay_s=2.0)
    late = await ping(ingest, src)
    assert late.status_code == 503, late.text
    assert late.json()["error"]["code"] == "auction_unavailable"
    assert int(late.headers["retry-after"]) >= 1

    auction.next = Plan(status=500)
    broken = await ping(ingest, src)
    assert broken.status_code == 503, broken.text
    assert broken.json()["error"]["code"] == "auction_unavailable"

    auction.next = Plan(status=409)  # the auction saw the campaign's switch turned off
    off = await ping(ingest, src)
    assert off.status_code == 409 and off.json()["error"]["code"] == "ping_post_disabled"


async def test_pings_over_the_sources_ping_rate_get_429(ingest: Service) -> None:
    (src,) = await configure(ingest, ping_post=ENABLED, controls=SourceControls(pings_per_s=0.01))
    assert (await ping(ingest, src)).status_code == 200
    over = await ping(ingest, src)
    assert over.status_code == 429, over.text
    assert over.json()["error"]["code"] == "rate_limited"
    assert int(over.headers["retry-after"]) >= 1


# --- posts ----------------------------------------------------------------------------------


async def test_the_post_of_a_ping_carries_its_bids_and_promised_payout(
    ingest: Service, auction: StubAuction
) -> None:
    (src,) = await configure(ingest, ping_post=ENABLED)
    buyer = uuid.uuid4()
    auction.next = Plan(payout=Decimal("15.00"), bids=((buyer, Decimal("42.00")),))
    ping_id = (await ping(ingest, src)).json()["ping_id"]

    r = await post(ingest, src, ping_id)

    assert r.status_code == 202, r.text
    lead_id = uuid.UUID(r.json()["lead_id"])
    ((_, body),) = [c for c in auction.claims if str(c[0]) == ping_id]
    assert body == {"source_id": str(src.source_id), "lead_id": str(lead_id)}
    (event,) = await received(ingest, src)
    p = event.payload
    assert (p.lead_id, str(p.ping_id), p.promised_payout) == (lead_id, ping_id, Decimal("15.00"))
    assert p.bids == (ev.Bid(buyer_id=buyer, price=Decimal("42.00"), bid_ref="ref-0"),)
    assert p.lead.pii is not None  # the full lead, PII sealed as on /v1/leads
    status = (await ingest.client.get(f"/v1/leads/{lead_id}", headers=src.auth)).json()
    assert (status["status"], status["ping_id"]) == ("received", ping_id)


async def test_a_post_the_auction_will_not_take_is_refused_with_its_code_and_leaves_nothing(
    ingest: Service, auction: StubAuction
) -> None:
    caps = (SourceCap(period=SourceCapPeriod.DAY, max_leads=100),)
    (src,) = await configure(ingest, ping_post=ENABLED, controls=SourceControls(caps=caps))
    (stranger,) = await configure(ingest, ping_post=ENABLED)
    taken = (await ping(ingest, src)).json()["ping_id"]
    assert (await post(ingest, src, taken)).status_code == 202
    expired = (await ping(ingest, src)).json()["ping_id"]
    auction.expire(uuid.UUID(expired))
    auction.next = Plan(outcome="no_bid", payout=None)
    no_bid = (await ping(ingest, src)).json()["ping_id"]

    cases = [
        (uuid.uuid4(), src, 404, "ping_not_found", "validation"),
        (taken, stranger, 404, "ping_not_found", "validation"),  # no existence leak
        (taken, src, 409, "ping_already_posted", "validation"),
        (expired, src, 410, "ping_expired", "ping_expired"),
        (no_bid, src, 422, "ping_without_bids", "validation"),
    ]
    ids = {}
    for ping_id, who, status, code, reason in cases:
        r = await post(ingest, who, ping_id, {**LEAD, "email": f"{code}@example.org"})
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert (error["code"], error["reason"]) == (code, reason)
        ids[uuid.UUID(error["lead_id"])] = (str(ping_id), reason)

    # Only the first post stored a lead and counted against the cap.
    assert await ingest.count("leads", "source_id = :s", s=src.source_id) == 1
    assert (
        await ingest.count("source_cap_counters", "source_id = :s and count = 1", s=src.source_id)
        == 1
    )
    assert len(await received(ingest, src)) == 1

    async def rejected() -> dict[uuid.UUID, ev.LeadRejected]:
        events: list[Event] = [
            *await ingest.events_of(LEAD_RECEIVED, src.account_id),
            *await ingest.events_of(LEAD_RECEIVED, stranger.account_id),
        ]
        found = {e.payload.lead_id: e for e in events if isinstance(e, ev.LeadRejected)}
        return found if len(found) >= len(ids) else {}

    events = await eventually(rejected, what="a LeadRejected per refused post")
    for lead_id, (ping_id, reason) in ids.items():
        payload = events[lead_id].payload
        assert (str(payload.ping_id), payload.rejections[0].code.value) == (ping_id, reason)


async def test_a_post_whose_publish_failed_after_its_claim_is_finished_by_its_retry(
    ingest: Service, auction: StubAuction, monkeypatch: pytest.MonkeyPatch
) -> None:
    (src,) = await configure(ingest, ping_post=ENABLED)
    ping_id = (await ping(ingest, src)).json()["ping_id"]

    async def kafka_down(event: Event, key: uuid.UUID | str) -> None:
        raise ConnectionError("kafka unreachable")

    with monkeypatch.context() as patch:
        patch.setattr(ingest.rt.publisher, "publish", kafka_down)
        failed = await post(ingest, src, ping_id, **{"idempotency-key": "post-1"})
    assert failed.status_code == 503, failed.text
    assert await ingest.count("leads", "source_id = :s", s=src.source_id) == 0

    retry = await post(ingest, src, ping_id, **{"idempotency-key": "post-1"})

    assert retry.status_code == 202, retry.text
    lead_id = retry.json()["lead_id"]
    claims = [body["lead_id"] for p, body in auction.claims if str(p) == ping_id]
    assert claims == [lead_id, lead_id]  # the same lead claimed twice: the same answer
    assert [str(e.payload.lead_id) for e in await received(ingest, src)] == [lead_id]
    # The same key and body now replay the answer; the same body for another ping is
    # another request.
    again = await post(ingest, src, ping_id, **{"idempotency-key": "post-1"})
    assert (again.status_code, again.content) == (202, retry.content)
    other = await post(ingest, src, uuid.uuid4(), **{"idempotency-key": "post-1"})
    assert other.json()["error"]["code"] == "idempotency_key_reused"
