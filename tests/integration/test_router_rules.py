"""The router's rules against real Kafka and PostgreSQL, with two router replicas in one
consumer group and a fake key vault. The test plays the delivery service: it reads
``lead.routed`` and answers each offer with a ``DeliveryAttempted``.

Caps are reservations no concurrency can overrun, a refused offer gives its slot back
exactly once, every buyer passed over is named with its reason, multi-sell sells up to
N times, and a ping-post post falls only to bids that still pay what was promised."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal

import pytest
from lx_devstack.infra import Infra
from lx_platform.consumer import is_transient
from lx_platform.runtime import Runtime
from lx_platform.settings import PlatformSettings
from lx_router import store
from lx_router.main import create_service
from lx_router.settings import RouterSettings
from lx_schemas import events as ev
from lx_schemas.envelope import Event
from lx_schemas.rules import Cap, CapPeriod, Margin
from lx_schemas.topics import LEAD_ROUTED
from sqlalchemy import text

from tests.support.http import ThreadedServer
from tests.support.router_world import Vault, World, attempted, publish_at_once
from tests.support.services import serving, settings_for
from tests.support.settle import read_all, republished, wait_consumed, wait_relayed

R = ev.DeliveryResult
C = ev.RejectionCode
Policy = Callable[[ev.LeadRouted], R | None]
WEEK = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass
class Routers:
    infra: Infra
    replicas: list[Runtime]
    prefix: str
    world: World

    @property
    def group(self) -> str:
        return f"{self.prefix}router"

    async def send(self, *events: tuple[Event, uuid.UUID]) -> None:
        """Publish at once; wait until handled and what was decided is relayed."""
        positions = await publish_at_once(self.infra.kafka_bootstrap, self.prefix, list(events))
        await wait_consumed(self.infra.kafka_bootstrap, self.group, positions)
        for rt in self.replicas:
            await wait_relayed(rt)

    async def configure(self, *configs: Event) -> None:
        await self.send(*[(c, c.correlation_id) for c in configs])

    async def decisions(self, campaign_id: uuid.UUID) -> list[Event]:
        events = await read_all(self.infra.kafka_bootstrap, LEAD_ROUTED.qualified(self.prefix))
        return [e for e in events if getattr(e.payload, "campaign_id", None) == campaign_id]

    async def play_delivery(self, campaign_id: uuid.UUID, policy: Policy) -> list[Event]:
        """Answer every offer of the campaign per ``policy`` (None: leave it unanswered)
        until no new offer comes; returns every decision of the campaign."""
        answered: set[uuid.UUID] = set()
        while True:
            decisions = await self.decisions(campaign_id)
            fresh = [
                d for d in decisions if isinstance(d, ev.LeadRouted) and d.event_id not in answered
            ]
            answered.update(d.event_id for d in fresh)
            replies = [
                (attempted(d, result), d.payload.lead_id)
                for d in fresh
                if (result := policy(d)) is not None
            ]
            if not replies:
                return decisions
            await self.send(*replies)

    async def scalar(self, sql: str, **params: object) -> object:
        async with self.replicas[0].db.begin() as conn:
            return (await conn.execute(text(sql), params)).scalar()


@pytest.fixture(scope="module")
async def routers(infra: Infra, isolation: str) -> AsyncIterator[Routers]:
    vault = Vault()
    with ThreadedServer(vault.app()) as vault_server:
        settings = settings_for(
            RouterSettings,
            infra,
            isolation,
            "router",
            platform=PlatformSettings(ingest_url=vault_server.url),
        )
        # Two replicas in one group over one database, as in production.
        async with (
            serving(create_service(settings)) as (_, one),
            serving(create_service(settings)) as (_, two),
        ):
            yield Routers(infra, [one, two], settings.kafka.topic_prefix, World(vault))
            for rt in (one, two):
                assert [c.dead_lettered for c in rt.consumers] == [0]


def routed(decisions: list[Event]) -> list[ev.LeadRouted]:
    return [d for d in decisions if isinstance(d, ev.LeadRouted)]


def exhausted(decisions: list[Event]) -> list[ev.LeadRoutingExhausted]:
    return [d for d in decisions if isinstance(d, ev.LeadRoutingExhausted)]


def accept_all(_: ev.LeadRouted) -> R:
    return R.ACCEPTED


async def setup(
    routers: Routers, *buyers: tuple[str, int, str, dict[str, object]], **campaign: object
) -> tuple[uuid.UUID, uuid.UUID, dict[str, uuid.UUID]]:
    w = routers.world
    c = w.campaign(**campaign)  # type: ignore[arg-type]
    cid = c.payload.campaign_id
    s = w.source(cid)
    configured = [w.buyer(cid, name, prio, price, **more) for name, prio, price, more in buyers]
    await routers.configure(c, s, *configured)
    return cid, s.payload.source_id, {b.payload.name: b.payload.buyer_id for b in configured}


# --- (a) caps under concurrency ---------------------------------------------------------------


async def test_200_concurrent_leads_give_a_buyer_capped_at_50_exactly_50(routers: Routers) -> None:
    cid, sid, ids = await setup(
        routers,
        ("Capped", 1, "40.00", {"caps": [{"period": "day", "max_leads": 50}]}),
        ("Open", 2, "30.00", {}),
    )
    leads = [routers.world.lead(cid, sid) for _ in range(200)]
    await routers.send(*[(x, x.payload.lead_id) for x in leads])

    decisions = await routers.play_delivery(cid, accept_all)
    by_buyer = Counter(d.payload.buyer_id for d in routed(decisions))
    assert by_buyer == {ids["Capped"]: 50, ids["Open"]: 150}
    assert {d.payload.lead_id for d in routed(decisions)} == {x.payload.lead_id for x in leads}
    assert exhausted(decisions) == []
    used = await routers.scalar(
        "select sum(used) from cap_counters where buyer_id = :b", b=ids["Capped"]
    )
    assert used == 50
    # Those sent on to the next buyer say why.
    to_open = [d for d in routed(decisions) if d.payload.buyer_id == ids["Open"]]
    assert all(d.payload.attempt == 1 and d.payload.price == Decimal("30.00") for d in to_open)


async def test_a_batch_that_counted_on_a_cap_slot_taken_meanwhile_is_decided_again(
    routers: Routers,
) -> None:
    """A batch reserves in memory and writes at its end: what another router committed
    in between is judged then, and a batch that no longer fits is refused whole."""
    db, buyer_id, now = routers.replicas[0].db, uuid.uuid4(), dt.datetime.now(dt.UTC)
    cap = Cap(period=CapPeriod.TOTAL, max_leads=3)

    async def take_elsewhere(n: int) -> None:
        async with db.begin() as other:
            await other.execute(
                text(
                    "insert into cap_counters values (:b, 'total', 'leads', :k, :n)"
                    " on conflict (buyer_id, period, unit, bucket)"
                    " do update set used = cap_counters.used + :n"
                ),
                {"b": buyer_id, "k": store.counter_key(buyer_id, cap, "UTC", now)[3], "n": n},
            )

    # Read 0, take 2 in memory; another router takes 1 meanwhile: 3 still fit.
    async with db.begin() as conn:
        ledger = store.CapLedger()
        for _ in range(2):
            taken = await ledger.reserve(conn, buyer_id, [cap], "UTC", Decimal("10.00"), now)
            assert isinstance(taken, list)
        await take_elsewhere(1)
        await ledger.flush(conn)
    # Now 2 of 3: this batch takes the last slot in memory (a fourth is refused), and
    # another router takes it before this batch writes, which would make 4 of 3.
    await take_elsewhere(-1)
    with pytest.raises(store.DecisionConflictError) as conflict:
        async with db.begin() as conn:
            ledger = store.CapLedger()
            taken = await ledger.reserve(conn, buyer_id, [cap], "UTC", Decimal("10.00"), now)
            assert isinstance(taken, list)
            assert await ledger.reserve(conn, buyer_id, [cap], "UTC", Decimal("10"), now) == cap
            await take_elsewhere(1)
            await ledger.flush(conn)
    assert is_transient(conflict.value)  # the consumer retries the batch
    used = await routers.scalar("select used from cap_counters where buyer_id = :b", b=buyer_id)
    assert used == 3


async def test_a_consumer_claimed_meanwhile_by_another_router_fails_the_batchs_claim(
    routers: Routers,
) -> None:
    db, buyer_id, now = routers.replicas[0].db, uuid.uuid4(), dt.datetime.now(dt.UTC)
    consumer, mine, theirs = b"\x01" * 32, uuid.uuid4(), uuid.uuid4()
    with pytest.raises(store.DecisionConflictError):
        async with db.begin() as conn:
            claims = store.ConsumerClaims()
            assert await claims.free(conn, buyer_id, [consumer], mine, now, 30)
            claims.take(buyer_id, [consumer], mine, now, 30)
            async with db.begin() as other:
                await other.execute(
                    text("insert into buyer_consumers values (:b, :h, :l, :now)"),
                    {"b": buyer_id, "h": consumer, "l": theirs, "now": now},
                )
            await claims.flush(conn)
    # Decided again, the batch finds the consumer inside the buyer's window.
    async with db.begin() as conn:
        assert not await store.ConsumerClaims().free(conn, buyer_id, [consumer], mine, now, 30)
    holder = await routers.scalar(
        "select lead_id from buyer_consumers where buyer_id = :b", b=buyer_id
    )
    assert holder == theirs


# --- (b) a refused offer gives its slot back, once ---------------------------------------------


async def test_a_rejected_offer_releases_its_reservation_exactly_once(routers: Routers) -> None:
    cid, sid, ids = await setup(
        routers,
        ("Capped", 1, "40.00", {"caps": [{"period": "day", "max_leads": 5}]}),
        ("Open", 2, "30.00", {}),
    )
    first = [routers.world.lead(cid, sid) for _ in range(5)]
    await routers.send(*[(x, x.payload.lead_id) for x in first])
    offers = routed(await routers.decisions(cid))
    assert [o.payload.buyer_id for o in offers] == [ids["Capped"]] * 5

    # Capped refuses two (one for good, one after a retried error); accepts the rest.
    refused, erred = offers[0], offers[1]
    unknown = attempted(offers[2], R.OUTCOME_UNKNOWN, final=False)
    await routers.send(
        (attempted(refused, R.REJECTED, reason="not in our area"), refused.payload.lead_id),
        (attempted(erred, R.ERROR, final=False), erred.payload.lead_id),
        (unknown, unknown.payload.lead_id),  # not final: the slot stays taken
    )
    final_error = attempted(erred, R.ERROR, try_number=2)
    await routers.send((final_error, erred.payload.lead_id))
    # Redelivered and replayed results release nothing more.
    await routers.send(
        (final_error, erred.payload.lead_id),
        (republished(final_error), erred.payload.lead_id),
    )
    decisions = await routers.play_delivery(cid, accept_all)
    assert (
        await routers.scalar(
            "select sum(used) from cap_counters where buyer_id = :b", b=ids["Capped"]
        )
        == 3
    )

    # Two slots are free again: of five new leads, two go to Capped, three to Open.
    second = [routers.world.lead(cid, sid) for _ in range(5)]
    await routers.send(*[(x, x.payload.lead_id) for x in second])
    decisions = await routers.play_delivery(cid, accept_all)
    news = {x.payload.lead_id for x in second}
    late = Counter(d.payload.buyer_id for d in routed(decisions) if d.payload.lead_id in news)
    assert late == {ids["Capped"]: 2, ids["Open"]: 3}
    # Both refused leads went on to Open.
    for lead_id in (refused.payload.lead_id, erred.payload.lead_id):
        chain = [d.payload.buyer_id for d in routed(decisions) if d.payload.lead_id == lead_id]
        assert chain == [ids["Capped"], ids["Open"]]
    assert (
        await routers.scalar(
            "select sum(used) from cap_counters where buyer_id = :b", b=ids["Capped"]
        )
        == 5
    )


# --- (c) every reason named --------------------------------------------------------------------


async def test_every_buyer_passed_over_is_named_with_its_reason(routers: Routers) -> None:
    today = WEEK[dt.datetime.now(dt.UTC).weekday()]
    cid, sid, ids = await setup(
        routers,
        ("Paused", 0, "50.00", {"status": "paused"}),
        ("West", 1, "50.00", {"filters": [{"field": "state", "op": "in", "values": ["CA", "NV"]}]}),
        (
            "Night",
            2,
            "50.00",
            {"schedule": {"windows": [{"days": [d for d in WEEK if d != today]}]}},
        ),
        ("Budget", 3, "50.00", {"caps": [{"period": "day", "max_usd": "20.00"}]}),
        ("Capped", 4, "50.00", {"caps": [{"period": "total", "max_leads": 1}]}),
        ("Once", 5, "50.00", {"dedupe_days": 30}),
        ("Cheap", 6, "10.50", {}),  # the source is paid 10.00, the margin is 1.00
        ("Corp", 7, "50.00", {"filters": [{"field": "email", "op": "regex", "pattern": "@corp"}]}),
        margin=Margin(fixed=Decimal("1.00")),
    )
    w = routers.world
    lead1, lead2, lead3 = (w.lead(cid, sid, state="TX") for _ in range(3))
    # 1: Capped takes it (its only slot). 2: Once is offered it and refuses.
    await routers.send((lead1, lead1.payload.lead_id))
    await routers.play_delivery(cid, accept_all)
    await routers.send((lead2, lead2.payload.lead_id))
    decisions = await routers.play_delivery(
        cid, lambda d: R.REJECTED if d.payload.buyer_id == ids["Once"] else R.ACCEPTED
    )
    # The refusal text reaches the reasons: take it from the rejection we sent.
    (end2,) = [e for e in exhausted(decisions) if e.payload.lead_id == lead2.payload.lead_id]
    assert end2.payload.reason is ev.ExhaustionReason.ALL_BUYERS_DECLINED
    assert end2.payload.attempts == 1
    # 3: the same consumer again, and a lead whose personal data is shredded.
    lead4 = w.lead(cid, sid, state="TX", email="zed@example.com", shredded=True)
    await routers.send((lead3, lead3.payload.lead_id), (lead4, lead4.payload.lead_id))
    decisions = await routers.decisions(cid)
    (end3,) = [e for e in exhausted(decisions) if e.payload.lead_id == lead3.payload.lead_id]
    assert end3.payload.reason is ev.ExhaustionReason.NO_ELIGIBLE_BUYERS
    assert end3.payload.attempts == 0
    reasons = {r.buyer_id: (r.code, r.detail) for r in end3.payload.rejections}
    assert reasons == {
        ids["Paused"]: (C.BUYER_PAUSED, "buyer Paused is paused"),
        ids["West"]: (C.FILTER, "filter 'state in [CA, NV]' of buyer West: state is TX"),
        ids["Night"]: (C.SCHEDULE_CLOSED, reasons[ids["Night"]][1]),
        ids["Budget"]: (C.BUYER_BUDGET, "buyer Budget has spent its day budget"),
        ids["Capped"]: (C.BUYER_CAP, "buyer Capped has reached its total cap"),
        ids["Once"]: (
            C.BUYER_DUPLICATE,
            "buyer Once was offered this consumer within its 30-day duplicate window",
        ),
        ids["Cheap"]: (
            C.PRICE_BELOW_PAYOUT,
            "buyer Cheap pays 10.50, less than the source's payout 10.00 plus the margin 1.00",
        ),
        ids["Corp"]: (
            C.FILTER,
            "filter 'email matches /@corp/' of buyer Corp: email does not meet it",
        ),
    }
    assert reasons[ids["Night"]][1].startswith("buyer Night is closed at ")
    assert "ann@example.com" not in end3.model_dump_json()

    (end4,) = [e for e in exhausted(decisions) if e.payload.lead_id == lead4.payload.lead_id]
    erased = {r.buyer_id: (r.code, r.detail) for r in end4.payload.rejections}
    assert erased[ids["Corp"]] == (
        C.FILTER,
        "filter 'email matches /@corp/' of buyer Corp: the lead's personal data is erased,"
        " so email cannot be checked",
    )
    assert erased[ids["Once"]][0] is C.BUYER_DUPLICATE
    assert "erased" in erased[ids["Once"]][1]


async def test_a_buyers_refusal_is_named_in_its_own_words(routers: Routers) -> None:
    cid, sid, ids = await setup(routers, ("Acme", 1, "40.00", {}), ("Beta", 2, "30.00", {}))
    received = routers.world.lead(cid, sid)
    await routers.send((received, received.payload.lead_id))
    (offer1,) = routed(await routers.decisions(cid))
    no = attempted(offer1, R.REJECTED, reason="duplicate in our CRM")
    await routers.send((no, received.payload.lead_id))
    offer2 = routed(await routers.decisions(cid))[1]
    late = attempted(
        offer2, R.REJECTED, reason="price below floor", reason_code=C.PRICE_BELOW_FLOOR
    )
    await routers.send((late, received.payload.lead_id))
    (end,) = exhausted(await routers.decisions(cid))
    assert [(r.code, r.buyer_id, r.detail) for r in end.payload.rejections] == [
        (C.BUYER_REJECTED, ids["Acme"], "buyer Acme rejected the lead: duplicate in our CRM"),
        (
            C.PRICE_BELOW_FLOOR,
            ids["Beta"],
            "buyer Beta answered a price below its floor: price below floor",
        ),
    ]


# --- (d) multi-sell -------------------------------------------------------------------------


async def test_multi_sell_sells_to_two_buyers_and_never_twice_to_one(routers: Routers) -> None:
    cid, sid, ids = await setup(
        routers,
        ("A", 1, "40.00", {}),
        ("B", 2, "35.00", {}),
        ("C", 3, "30.00", {}),
        ("D", 4, "25.00", {}),
        max_sales=2,
    )
    sells, short = routers.world.lead(cid, sid), routers.world.lead(cid, sid)
    await routers.send((sells, sells.payload.lead_id), (short, short.payload.lead_id))
    refuse = {(sells.payload.lead_id, ids["B"]), (short.payload.lead_id, ids["B"])}
    refuse |= {(short.payload.lead_id, ids["C"]), (short.payload.lead_id, ids["D"])}
    decisions = await routers.play_delivery(
        cid,
        lambda d: R.REJECTED if (d.payload.lead_id, d.payload.buyer_id) in refuse else R.ACCEPTED,
    )

    def chain(lead: ev.LeadReceived) -> list[tuple[uuid.UUID, int, int]]:
        return [
            (d.payload.buyer_id, d.payload.attempt, d.payload.sale)
            for d in routed(decisions)
            if d.payload.lead_id == lead.payload.lead_id
        ]

    # A buys (sale 1), B refuses, C buys (sale 2): done, D is never offered it.
    assert chain(sells) == [(ids["A"], 1, 1), (ids["B"], 2, 2), (ids["C"], 3, 2)]
    assert [e for e in exhausted(decisions) if e.payload.lead_id == sells.payload.lead_id] == []
    # A buys, the rest refuse: routing ends with one sale.
    assert chain(short) == [(ids["A"], 1, 1), (ids["B"], 2, 2), (ids["C"], 3, 2), (ids["D"], 4, 2)]
    (end,) = [e for e in exhausted(decisions) if e.payload.lead_id == short.payload.lead_id]
    assert (end.payload.sales, end.payload.attempts) == (1, 4)
    assert end.payload.reason is ev.ExhaustionReason.ALL_BUYERS_DECLINED


# --- (e) ping-post --------------------------------------------------------------------------


async def test_a_post_falls_to_the_next_bid_only_while_it_covers_the_promise(
    routers: Routers,
) -> None:
    cid, sid, ids = await setup(
        routers,
        ("Winner", 1, "1.00", {}),
        ("Gone", 1, "1.00", {"status": "paused"}),
        ("Second", 1, "1.00", {}),
        ("Third", 1, "1.00", {}),
        margin=Margin(fixed=Decimal("2.00")),
    )
    bids = [(ids["Winner"], "40.00"), (ids["Gone"], "30.00"), (ids["Second"], "12.00")]
    bids += [(ids["Third"], "11.99")]
    post = routers.world.post(cid, sid, bids, promised="10.00")
    await routers.send((post, post.payload.lead_id))
    decisions = await routers.play_delivery(cid, lambda _: R.REJECTED)

    offers = routed(decisions)
    assert [(o.payload.buyer_id, o.payload.price, o.payload.bid_ref) for o in offers] == [
        (ids["Winner"], Decimal("40.00"), "bid-0"),
        (ids["Second"], Decimal("12.00"), "bid-2"),  # 12.00 pays 10.00 + the 2.00 margin
    ]
    for o in offers:
        assert o.payload.ping_id == post.payload.ping_id
        assert o.payload.payout.fixed == Decimal("10.00")
        assert not o.payload.price_from_response
    (end,) = exhausted(decisions)
    assert [(r.code, r.buyer_id) for r in end.payload.rejections] == [
        (C.BUYER_REJECTED, ids["Winner"]),
        (C.BUYER_PAUSED, ids["Gone"]),
        (C.BUYER_REJECTED, ids["Second"]),
        (C.PRICE_BELOW_PAYOUT, ids["Third"]),
    ]


async def test_a_post_is_screened_again_on_its_own_fields_personal_data_included(
    routers: Routers,
) -> None:
    # The auction saw only the ping's non-personal fields: a filter on the date of birth
    # waits for the post, and a post whose state differs from its ping is judged as posted.
    cid, sid, ids = await setup(
        routers,
        ("Young", 1, "1.00", {"filters": [{"field": "dob", "op": "age_between", "max": 30}]}),
        ("Texan", 1, "1.00", {"filters": [{"field": "state", "op": "in", "values": ["TX"]}]}),
        ("Anyone", 1, "1.00", {}),
    )
    bids = [(ids["Young"], "50.00"), (ids["Texan"], "45.00"), (ids["Anyone"], "20.00")]
    post = routers.world.post(cid, sid, bids, promised="10.00")  # born 1980, from CA
    await routers.send((post, post.payload.lead_id))
    decisions = await routers.play_delivery(cid, lambda _: R.REJECTED)

    assert [o.payload.buyer_id for o in routed(decisions)] == [ids["Anyone"]]
    (end,) = exhausted(decisions)
    assert [(r.code, r.buyer_id) for r in end.payload.rejections] == [
        (C.FILTER, ids["Young"]),
        (C.FILTER, ids["Texan"]),
        (C.BUYER_REJECTED, ids["Anyone"]),
    ]


# --- prepaid funds (billing.limits) ---------------------------------------------------------


def funds(buyer_id: uuid.UUID, account: uuid.UUID, has: bool, balance: str) -> ev.BuyerFundsChanged:
    return ev.BuyerFundsChanged.new(
        account_id=account,
        correlation_id=buyer_id,
        producer="test",
        payload=ev.BuyerFundsChangedPayload(
            buyer_id=buyer_id,
            has_funds=has,
            balance=Decimal(balance),
            credit_limit=Decimal("0.00"),
        ),
    )


async def test_a_prepaid_buyer_out_of_funds_is_passed_over_until_topped_up(
    routers: Routers,
) -> None:
    cid, sid, ids = await setup(routers, ("Prepaid", 1, "40.00", {}), ("Postpaid", 2, "30.00", {}))
    account = routers.world.account
    await routers.send((funds(ids["Prepaid"], account, False, "-5.00"), ids["Prepaid"]))
    first = routers.world.lead(cid, sid)
    await routers.send((first, first.payload.lead_id))
    await routers.send((funds(ids["Prepaid"], account, True, "95.00"), ids["Prepaid"]))
    second = routers.world.lead(cid, sid)
    await routers.send((second, second.payload.lead_id))
    decisions = await routers.play_delivery(cid, accept_all)

    by_lead = {o.payload.lead_id: o.payload.buyer_id for o in routed(decisions)}
    assert by_lead == {
        first.payload.lead_id: ids["Postpaid"],
        second.payload.lead_id: ids["Prepaid"],
    }
    # The first lead's record says why the prepaid buyer was passed over.
    why = await routers.scalar(
        "select rejections::text from routings where lead_id = :l", l=first.payload.lead_id
    )
    assert '"no_funds"' in str(why) and str(ids["Prepaid"]) in str(why)
