"""The auction service against real Kafka and PostgreSQL, with fake bidders as real HTTP
servers on loopback: buyers pinged in parallel within their timeouts, a late bid ignored,
the right winner and payout, every ping and bid an event on ``lead.pinged``, and a ping's
result claimed by exactly one post."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import pytest
from lx_auction.main import create_service
from lx_auction.settings import AuctionSettings
from lx_devstack.buyer import create_buyer_app
from lx_devstack.infra import Infra
from lx_platform.runtime import Runtime
from lx_platform.settings import PlatformSettings
from lx_schemas import events as ev
from lx_schemas.envelope import Event, utcnow
from lx_schemas.integration import Extract, PingConfig, Probe
from lx_schemas.rules import Filter, FilterOp, Margin, Payout, PingPost
from lx_schemas.topics import LEAD_PINGED

from tests.support.http import ThreadedServer
from tests.support.kafka import read_to_end
from tests.support.services import serving, settings_for
from tests.support.settle import publish, read_all, wait_consumed, wait_relayed

INTERNAL = {"x-lx-internal-token": "dev-internal-token"}
ACCOUNT = uuid.uuid4()
P = ev.PingResult
FIELDS: dict[str, ev.FieldValue] = {"state": "CA", "zip": "94105", "loan_amount": 250000}


class Clock:
    """The service's wall clock, which a test may move forward (expiries)."""

    def __init__(self) -> None:
        self.offset = dt.timedelta()

    def now(self) -> dt.datetime:
        return utcnow() + self.offset


@dataclass
class Campaign:
    state: ev.CampaignState
    source: ev.SourceState
    buyers: dict[str, ev.BuyerState] = field(default_factory=dict)

    @property
    def campaign_id(self) -> uuid.UUID:
        return self.state.campaign_id

    @property
    def source_id(self) -> uuid.UUID:
        return self.source.source_id


@dataclass
class Auction:
    infra: Infra
    client: httpx.AsyncClient
    rt: Runtime
    prefix: str
    buyer_url: str
    clock: Clock

    async def configure(self, *events: Event) -> None:
        """Publish configuration and wait until the auction service has taken it in."""
        keyed = [(e, e.correlation_id) for e in events]
        positions = await publish(self.infra.kafka_bootstrap, self.prefix, keyed)
        await wait_consumed(self.infra.kafka_bootstrap, f"{self.prefix}auction", positions)

    async def campaign(
        self,
        *,
        enabled: bool = True,
        payout: Payout | None = None,
        margin: Margin | None = None,
        auction_ms: int = 2_000,
        ttl_s: int = 60,
    ) -> Campaign:
        state = ev.CampaignState(
            campaign_id=uuid.uuid4(),
            account_id=ACCOUNT,
            name="Mortgage refinance",
            vertical="mortgage",
            fields=(
                ev.FieldSpec(name="email", type=ev.FieldType.EMAIL, required=True, pii=True),
                ev.FieldSpec(name="state", type=ev.FieldType.US_STATE, required=True),
                ev.FieldSpec(name="zip", type=ev.FieldType.ZIP),
                ev.FieldSpec(name="loan_amount", type=ev.FieldType.INTEGER),
            ),
            margin=margin or Margin(),
            ping_post=PingPost(enabled=enabled, auction_ms=auction_ms, ttl_s=ttl_s),
        )
        source = ev.SourceState(
            source_id=uuid.uuid4(),
            account_id=ACCOUNT,
            campaign_id=state.campaign_id,
            name="Affiliate",
            api_key_prefix="lx_test",
            api_key_sha256="0" * 64,
            payout=payout or Payout(fixed=Decimal("10.00")),
        )
        await self.configure(
            ev.CampaignConfigured.new(
                account_id=ACCOUNT, correlation_id=state.campaign_id, producer="test", payload=state
            ),
            ev.SourceConfigured.new(
                account_id=ACCOUNT, correlation_id=source.source_id, producer="test", payload=source
            ),
        )
        return Campaign(state, source)

    def bidder(
        self,
        campaign: Campaign,
        name: str,
        *,
        mode: str = "bid",
        price: str = "10.00",
        delay_ms: int = 0,
        timeout_ms: int = 1_500,
        priority: int = 1,
        pings: bool = True,
        **changes: Any,
    ) -> ev.BuyerConfigured:
        """A buyer of the campaign whose ping endpoint is the fake buyer's ``mode``."""
        tag = f"{name}-{uuid.uuid4().hex[:6]}"
        ping = PingConfig(
            url=f"{self.buyer_url}/buyers/{tag}/{mode}?price={price}&ms={delay_ms}&bid_id=ref-{tag}",
            timeout_ms=timeout_ms,
            bid_ref=Probe(kind=Extract.JSON_PATH, path="$.bid_id"),
        )
        state = ev.BuyerState(
            buyer_id=uuid.uuid4(),
            account_id=ACCOUNT,
            campaign_id=campaign.campaign_id,
            name=tag,
            endpoint_url=f"{self.buyer_url}/buyers/{tag}/accept",
            price=Decimal("5.00"),
            priority=priority,
            ping=ping if pings else None,
            **changes,
        )
        campaign.buyers[name] = state
        return ev.BuyerConfigured.new(
            account_id=ACCOUNT, correlation_id=state.buyer_id, producer="test", payload=state
        )

    async def ping(
        self,
        campaign: Campaign,
        ping_id: uuid.UUID | None = None,
        changes: dict[str, Any] | None = None,
    ) -> httpx.Response:
        body = {
            "ping_id": str(ping_id or uuid.uuid4()),
            "account_id": str(ACCOUNT),
            "campaign_id": str(campaign.campaign_id),
            "source_id": str(campaign.source_id),
            "fields": FIELDS,
        } | (changes or {})
        return await self.client.post("/internal/v1/auctions", json=body, headers=INTERNAL)

    async def claim(self, ping_id: str, lead_id: uuid.UUID, source_id: uuid.UUID) -> httpx.Response:
        return await self.client.post(
            f"/internal/v1/auctions/{ping_id}/claim",
            json={"source_id": str(source_id), "lead_id": str(lead_id)},
            headers=INTERNAL,
        )

    async def events(self, ping_id: str) -> list[Event]:
        await wait_relayed(self.rt)
        events = await read_all(self.infra.kafka_bootstrap, LEAD_PINGED.qualified(self.prefix))
        return [e for e in events if str(e.correlation_id) == ping_id]

    async def pinged(self, buyer: ev.BuyerState) -> list[dict[str, Any]]:
        """The pings the fake buyer received for ``buyer``."""
        async with httpx.AsyncClient() as client:
            answer = await client.get(
                f"{self.buyer_url}/received", params={"buyer": buyer.name, "full": "1"}
            )
        rows: list[dict[str, Any]] = answer.raise_for_status().json()
        return rows


@pytest.fixture(scope="module")
async def auction(infra: Infra, isolation: str) -> AsyncIterator[Auction]:
    clock = Clock()
    with ThreadedServer(create_buyer_app()) as buyer:
        settings = settings_for(
            AuctionSettings,
            infra,
            isolation,
            "auction",
            # The fake bidders are on loopback, which only the allow-list opens.
            platform=PlatformSettings(egress_allow_cidrs=("127.0.0.1/32",)),
        )
        try:
            async with serving(create_service(settings, clock=clock.now)) as (client, rt):
                yield Auction(infra, client, rt, settings.kafka.topic_prefix, buyer.url, clock)
                assert [c.dead_lettered for c in rt.consumers] == [0]
        finally:
            buyer.server.force_exit = True  # a late bidder may still be sleeping


# --- the auction ----------------------------------------------------------------------------


async def test_five_bidders_the_best_timely_bid_wins_and_the_late_one_is_ignored(
    auction: Auction,
) -> None:
    campaign = await auction.campaign(
        payout=Payout(percent=Decimal("50.00")), margin=Margin(fixed=Decimal("7.00"))
    )
    await auction.configure(
        auction.bidder(campaign, "steady", price="30.00", delay_ms=50),
        auction.bidder(campaign, "best", price="42.00", delay_ms=150, priority=3),
        # The highest bid, but only after the buyer's own timeout: ignored.
        auction.bidder(campaign, "late", price="60.00", delay_ms=1_200, timeout_ms=300),
        auction.bidder(campaign, "quick", price="25.00"),
        # 12.00 pays the source 6.00 and leaves 6.00 < the 7.00 margin: excluded.
        auction.bidder(campaign, "cheap", price="12.00", delay_ms=20),
        # Not pinged: a filter the ping fails, a paused buyer, a post-only buyer.
        auction.bidder(
            campaign,
            "texan",
            price="99.00",
            filters=(Filter(field="state", op=FilterOp.IN, values=("TX",)),),
        ),
        auction.bidder(campaign, "paused", price="99.00", status=ev.Status.PAUSED),
        auction.bidder(campaign, "poster", price="99.00", pings=False),
    )
    b = campaign.buyers

    answer = await auction.ping(
        campaign, changes={"fields": {**FIELDS, "email": "ann@example.com"}}
    )

    assert answer.status_code == 200, answer.text
    body = answer.json()
    ping_id = body["ping_id"]
    assert body["outcome"] == "bid"
    assert body["payout"] == "21.00"  # 50 % of the winning 42.00
    expires_at = dt.datetime.fromisoformat(body["expires_at"])
    assert dt.timedelta(seconds=55) < expires_at - utcnow() <= dt.timedelta(seconds=60)
    codes = {(r["buyer_id"], r["code"]) for r in body["rejections"]}
    assert codes == {
        (str(b["texan"].buyer_id), "filter"),
        (str(b["paused"].buyer_id), "buyer_paused"),
        (str(b["cheap"].buyer_id), "price_below_payout"),
    }
    texan = next(r for r in body["rejections"] if r["code"] == "filter")
    assert texan["field"] == "state"

    # Pinged in parallel, each once, with the ping's non-PII fields and its id.
    for name in ("steady", "best", "late", "quick", "cheap"):
        (got,) = await auction.pinged(b[name])
        assert got["lead"] == {**FIELDS, "ping_id": ping_id}
    for name in ("texan", "paused", "poster"):
        assert await auction.pinged(b[name]) == []

    events = await auction.events(ping_id)
    names = [type(e).__name__ for e in events]
    assert (names[0], names[-1], len(names)) == ("PingReceived", "AuctionClosed", 7)
    received = events[0]
    assert isinstance(received, ev.PingReceived)
    assert received.payload.fields == FIELDS  # the e-mail never left the auction service

    pinged = {e.payload.buyer_id: e.payload for e in events if isinstance(e, ev.BuyerPinged)}
    assert len(pinged) == 5
    late = pinged[b["late"].buyer_id]
    assert (late.result, late.price, late.bid_ref) == (P.TIMEOUT, None, None)
    assert late.latency_ms < 1_200  # given up on at its timeout, not waited for
    best = pinged[b["best"].buyer_id]
    assert (best.result, best.price, best.bid_ref) == (
        P.BID,
        Decimal("42.00"),
        f"ref-{b['best'].name}",
    )
    assert best.http_status == 200
    assert pinged[b["cheap"].buyer_id].result is P.BID  # it did bid; the auction excluded it

    closed = events[-1]
    assert isinstance(closed, ev.AuctionClosed)
    assert [(x.buyer_id, x.price) for x in closed.payload.bids] == [
        (b["best"].buyer_id, Decimal("42.00")),
        (b["steady"].buyer_id, Decimal("30.00")),
        (b["quick"].buyer_id, Decimal("25.00")),
    ]
    assert closed.payload.payout == Decimal("21.00")
    assert closed.payload.expires_at == expires_at
    assert closed.payload.duration_ms == pytest.approx(body["duration_ms"])
    assert {(str(r.buyer_id), r.code.value) for r in closed.payload.rejections} == codes

    # Every event of the ping is keyed by the ping id (one partition, in order).
    topic = LEAD_PINGED.qualified(auction.prefix)
    records = await read_to_end(auction.infra.kafka_bootstrap, topic)
    keys = {r.key for r in records if r.value and ping_id.encode() in r.value}
    assert keys == {ping_id.encode()}


async def test_the_same_ping_id_twice_answers_the_recorded_auction(auction: Auction) -> None:
    campaign = await auction.campaign()
    await auction.configure(auction.bidder(campaign, "only", price="33.00", delay_ms=10))
    ping_id = uuid.uuid4()

    first = await auction.ping(campaign, ping_id)
    again = await auction.ping(campaign, ping_id)

    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert len(await auction.pinged(campaign.buyers["only"])) == 1
    events = await auction.events(str(ping_id))
    assert [type(e).__name__ for e in events] == ["PingReceived", "BuyerPinged", "AuctionClosed"]


async def test_no_bid_answers_no_payout_and_no_expiry(auction: Auction) -> None:
    campaign = await auction.campaign()
    await auction.configure(auction.bidder(campaign, "decliner", mode="nobid"))

    answer = await auction.ping(campaign)

    body = answer.json()
    assert (body["outcome"], body["payout"], body["expires_at"]) == ("no_bid", None, None)
    (pinged,) = [e for e in await auction.events(body["ping_id"]) if isinstance(e, ev.BuyerPinged)]
    assert pinged.payload.result is P.NO_BID
    assert pinged.payload.reason == "not bidding on this one"


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"campaign_id": str(uuid.uuid4())}, 404, "campaign_not_found"),
        ({"account_id": str(uuid.uuid4())}, 404, "campaign_not_found"),
        ({"source_id": str(uuid.uuid4())}, 404, "source_not_found"),
        ({"fields": "state=CA"}, 422, "invalid_request"),
    ],
)
async def test_an_auction_for_an_unknown_campaign_or_source_is_refused_with_a_code(
    auction: Auction, change: dict[str, str], status: int, code: str
) -> None:
    campaign = await auction.campaign()
    answer = await auction.ping(campaign, changes=change)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code


async def test_a_campaign_without_ping_post_refuses_auctions(auction: Auction) -> None:
    campaign = await auction.campaign(enabled=False)
    answer = await auction.ping(campaign)
    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "ping_post_disabled"


async def test_auctions_need_the_internal_token(auction: Auction) -> None:
    answer = await auction.client.post("/internal/v1/auctions", json={})
    assert answer.status_code == 401


# --- claims ---------------------------------------------------------------------------------


async def test_a_ping_is_claimed_by_one_lead_only(auction: Auction) -> None:
    campaign = await auction.campaign()
    await auction.configure(
        auction.bidder(campaign, "high", price="40.00"),
        auction.bidder(campaign, "low", price="20.00"),
    )
    ping_id = (await auction.ping(campaign)).json()["ping_id"]
    lead, other = uuid.uuid4(), uuid.uuid4()

    first = await auction.claim(ping_id, lead, campaign.source_id)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["ping_id"] == ping_id
    assert [(x["buyer_id"], x["price"]) for x in body["bids"]] == [
        (str(campaign.buyers["high"].buyer_id), "40.00"),
        (str(campaign.buyers["low"].buyer_id), "20.00"),
    ]
    assert body["bids"][0]["bid_ref"] == f"ref-{campaign.buyers['high'].name}"
    assert body["promised_payout"] == "10.00"

    again = await auction.claim(ping_id, lead, campaign.source_id)
    assert (again.status_code, again.json()) == (200, body)

    taken = await auction.claim(ping_id, other, campaign.source_id)
    assert (taken.status_code, taken.json()["error"]["code"]) == (409, "ping_already_posted")

    elsewhere = await auction.claim(ping_id, lead, uuid.uuid4())
    assert (elsewhere.status_code, elsewhere.json()["error"]["code"]) == (404, "ping_not_found")

    unknown = await auction.claim(str(uuid.uuid4()), lead, campaign.source_id)
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "ping_not_found")


async def test_a_ping_past_its_time_to_live_cannot_be_claimed_but_its_lead_keeps_it(
    auction: Auction,
) -> None:
    campaign = await auction.campaign(ttl_s=30)
    await auction.configure(auction.bidder(campaign, "bidder", price="40.00"))
    claimed = (await auction.ping(campaign)).json()["ping_id"]
    unclaimed = (await auction.ping(campaign)).json()["ping_id"]
    lead = uuid.uuid4()
    assert (await auction.claim(claimed, lead, campaign.source_id)).status_code == 200

    auction.clock.offset += dt.timedelta(seconds=31)
    try:
        expired = await auction.claim(unclaimed, uuid.uuid4(), campaign.source_id)
        kept = await auction.claim(claimed, lead, campaign.source_id)
    finally:
        auction.clock.offset -= dt.timedelta(seconds=31)

    assert (expired.status_code, expired.json()["error"]["code"]) == (410, "ping_expired")
    assert kept.status_code == 200


async def test_a_ping_without_bids_has_nothing_to_claim(auction: Auction) -> None:
    campaign = await auction.campaign()
    await auction.configure(auction.bidder(campaign, "decliner", mode="nobid"))
    ping_id = (await auction.ping(campaign)).json()["ping_id"]

    answer = await auction.claim(ping_id, uuid.uuid4(), campaign.source_id)

    assert (answer.status_code, answer.json()["error"]["code"]) == (422, "ping_without_bids")
