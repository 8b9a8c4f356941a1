"""The router against real Kafka and PostgreSQL: each lead goes down its campaign's
waterfall one buyer at a time, every decision is made exactly once, and a sold or
exhausted lead leaves the waterfall. (Caps, filters, multi-sell and ping-post:
test_router_rules.py.) These campaigns and sources are not configured at all: the
router routes with the defaults (an exclusive waterfall, no margin, no payout)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from lx_devstack.infra import Infra
from lx_platform.crypto import new_data_key, seal_fields
from lx_platform.runtime import Runtime
from lx_router.main import create_service
from lx_router.settings import RouterSettings
from lx_schemas import events as ev
from lx_schemas.envelope import Event, derived_id
from lx_schemas.topics import LEAD_ROUTED
from sqlalchemy import text

from tests.support.services import serving, settings_for
from tests.support.settle import (
    publish,
    read_all,
    republished,
    wait_consumed,
    wait_relayed,
)

ACCOUNT = uuid.uuid4()
SOURCE = uuid.uuid4()


# --- the service under test -----------------------------------------------------------------


@dataclass
class Router:
    infra: Infra
    rt: Runtime
    prefix: str

    @property
    def group(self) -> str:
        return f"{self.prefix}router"

    async def send(self, *events: tuple[Event, uuid.UUID]) -> None:
        """Publish and wait until the router has handled them and relayed what it decided."""
        positions = await publish(self.infra.kafka_bootstrap, self.prefix, events)
        await wait_consumed(self.infra.kafka_bootstrap, self.group, positions)
        await wait_relayed(self.rt)

    async def decisions(self, lead_id: uuid.UUID) -> list[Event]:
        """Every decision on ``lead.routed`` for this lead, in order."""
        events = await read_all(self.infra.kafka_bootstrap, LEAD_ROUTED.qualified(self.prefix))
        return [e for e in events if e.correlation_id == lead_id]

    async def routing_state(self, lead_id: uuid.UUID) -> tuple[int, str]:
        async with self.rt.db.begin() as conn:
            row = (
                await conn.execute(
                    text("select attempt, status from routings where lead_id = :l"), {"l": lead_id}
                )
            ).one()
        return row.attempt, row.status


@pytest.fixture(scope="module")
async def router(infra: Infra, isolation: str) -> AsyncIterator[Router]:
    settings = settings_for(RouterSettings, infra, isolation, "router")
    async with serving(create_service(settings)) as (_, rt):
        yield Router(infra, rt, settings.kafka.topic_prefix)
        assert [c.dead_lettered for c in rt.consumers] == [0]


# --- events ---------------------------------------------------------------------------------


def buyer(
    campaign: uuid.UUID, priority: int, price: str, status: ev.Status = ev.Status.ACTIVE
) -> ev.BuyerConfigured:
    buyer_id = uuid.uuid4()
    return ev.BuyerConfigured.new(
        account_id=ACCOUNT,
        correlation_id=buyer_id,
        producer="test",
        payload=ev.BuyerState(
            buyer_id=buyer_id,
            account_id=ACCOUNT,
            campaign_id=campaign,
            name=f"p{priority}",
            status=status,
            endpoint_url="http://127.0.0.1:9/leads",
            price=Decimal(price),
            priority=priority,
        ),
    )


def lead(campaign: uuid.UUID) -> ev.LeadReceived:
    lead_id = uuid.uuid4()
    pii = {"email": "ann@example.com", "phone": "4155550100"}
    content = ev.LeadContent(
        fields={
            "state": "CA",
            "zip": "94105",
            "loan_amount": 250000,
            "credit_score": 701.5,
            "homeowner": True,
            "notes": None,
        },
        pii=seal_fields(new_data_key(), lead_id, pii),
    )
    return ev.LeadReceived.new(
        account_id=ACCOUNT,
        correlation_id=lead_id,
        producer="test",
        payload=ev.LeadReceivedPayload(
            lead_id=lead_id, campaign_id=campaign, source_id=SOURCE, lead=content
        ),
    )


def attempted(
    routed: ev.LeadRouted, result: ev.DeliveryResult, *, final: bool = True, try_number: int = 1
) -> ev.DeliveryAttempted:
    p = routed.payload
    return ev.DeliveryAttempted.new(
        account_id=ACCOUNT,
        correlation_id=p.lead_id,
        causation_id=routed.event_id,
        producer="test",
        payload=ev.DeliveryAttemptedPayload(
            lead_id=p.lead_id,
            campaign_id=p.campaign_id,
            source_id=p.source_id,
            buyer_id=p.buyer_id,
            delivery_id=p.delivery_id,
            attempt=p.attempt,
            try_number=try_number,
            final=final,
            result=result,
            http_status=200 if result is not ev.DeliveryResult.ERROR else 503,
            latency_ms=12.5,
            reason="not buying this one" if result is ev.DeliveryResult.REJECTED else None,
            reason_code={
                ev.DeliveryResult.REJECTED: ev.RejectionCode.BUYER_REJECTED,
                ev.DeliveryResult.ERROR: ev.RejectionCode.BUYER_ERROR,
            }.get(result),
        ),
    )


def summary(decisions: list[Event]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for d in decisions:
        if isinstance(d, ev.LeadRouted):
            out.append(("routed", d.payload.attempt, d.payload.buyer_id, d.payload.price))
        else:
            assert isinstance(d, ev.LeadRoutingExhausted)
            out.append(("exhausted", d.payload.reason, d.payload.attempts))
    return out


async def campaign_with_waterfall(
    router: Router,
) -> tuple[uuid.UUID, ev.BuyerConfigured, ev.BuyerConfigured, ev.BuyerConfigured]:
    """Priority 1 and 2 active, priority 0 paused (the best slot, but not eligible)."""
    campaign = uuid.uuid4()
    first, second = buyer(campaign, 1, "35.00"), buyer(campaign, 2, "50.00")
    paused = buyer(campaign, 0, "99.00", ev.Status.PAUSED)
    await router.send(*[(b, b.payload.buyer_id) for b in (second, paused, first)])
    return campaign, first, second, paused


# --- tests ----------------------------------------------------------------------------------


async def test_lead_goes_down_the_waterfall_until_every_active_buyer_declines(
    router: Router,
) -> None:
    campaign, first, second, paused = await campaign_with_waterfall(router)
    received = lead(campaign)
    lead_id = received.payload.lead_id
    first_id, second_id = first.payload.buyer_id, second.payload.buyer_id

    await router.send((received, lead_id))
    decisions = await router.decisions(lead_id)
    assert summary(decisions) == [("routed", 1, first_id, Decimal("35.00"))]
    offer1 = decisions[0]
    assert isinstance(offer1, ev.LeadRouted)
    assert offer1.event_id == derived_id("lead.routed", lead_id, 1)
    assert offer1.payload.delivery_id == derived_id("delivery", lead_id, first_id, 1)
    assert offer1.payload.lead == received.payload.lead
    assert (offer1.payload.campaign_id, offer1.payload.source_id) == (campaign, SOURCE)
    assert (offer1.account_id, offer1.causation_id) == (ACCOUNT, received.event_id)
    assert offer1.producer == "router"

    # The first buyer declines for good: the next one in priority order gets the lead.
    rejected1 = attempted(offer1, ev.DeliveryResult.REJECTED)
    await router.send((rejected1, lead_id))
    decisions = await router.decisions(lead_id)
    assert summary(decisions) == [
        ("routed", 1, first_id, Decimal("35.00")),
        ("routed", 2, second_id, Decimal("50.00")),
    ]
    offer2 = decisions[1]
    assert isinstance(offer2, ev.LeadRouted)
    assert offer2.payload.delivery_id == derived_id("delivery", lead_id, second_id, 2)
    assert offer2.payload.lead == received.payload.lead  # carried through the router's store
    assert offer2.causation_id == rejected1.event_id

    # An error that delivery will still retry (same delivery id) is not a decision.
    await router.send((attempted(offer2, ev.DeliveryResult.ERROR, final=False), lead_id))
    assert len(await router.decisions(lead_id)) == 2
    assert await router.routing_state(lead_id) == (2, "routing")

    await router.send((attempted(offer2, ev.DeliveryResult.REJECTED, try_number=2), lead_id))
    decisions = await router.decisions(lead_id)
    assert summary(decisions) == [
        ("routed", 1, first_id, Decimal("35.00")),
        ("routed", 2, second_id, Decimal("50.00")),
        ("exhausted", ev.ExhaustionReason.ALL_BUYERS_DECLINED, 2),
    ]
    assert decisions[2].event_id == derived_id("lead.routing_exhausted", lead_id)
    assert await router.routing_state(lead_id) == (2, "exhausted")
    exhausted = decisions[2]
    assert isinstance(exhausted, ev.LeadRoutingExhausted)
    assert [(r.code, r.buyer_id) for r in exhausted.payload.rejections] == [
        (ev.RejectionCode.BUYER_PAUSED, paused.payload.buyer_id),
        (ev.RejectionCode.BUYER_REJECTED, first_id),
        (ev.RejectionCode.BUYER_REJECTED, second_id),
    ]
    detail = exhausted.payload.rejections[1].detail
    assert detail == "buyer p1 rejected the lead: not buying this one"


async def test_lead_of_a_campaign_without_active_buyers_is_exhausted_at_once(
    router: Router,
) -> None:
    only_paused, unknown = uuid.uuid4(), uuid.uuid4()
    paused = buyer(only_paused, 1, "20.00", ev.Status.PAUSED)
    await router.send((paused, paused.payload.buyer_id))
    leads = [lead(only_paused), lead(unknown)]

    await router.send(*[(x, x.payload.lead_id) for x in leads])
    for x in leads:
        decisions = await router.decisions(x.payload.lead_id)
        assert summary(decisions) == [("exhausted", ev.ExhaustionReason.NO_ELIGIBLE_BUYERS, 0)]
        exhausted = decisions[0]
        assert isinstance(exhausted, ev.LeadRoutingExhausted)
        assert (exhausted.payload.campaign_id, exhausted.payload.source_id) == (
            x.payload.campaign_id,
            SOURCE,
        )
        assert await router.routing_state(x.payload.lead_id) == (0, "exhausted")


async def test_redelivered_lead_or_result_makes_no_second_decision(router: Router) -> None:
    campaign, first, second, _ = await campaign_with_waterfall(router)
    received = lead(campaign)
    lead_id = received.payload.lead_id

    # Kafka redelivery (same event id) and a replay under a new event id.
    await router.send((received, lead_id), (received, lead_id), (republished(received), lead_id))
    decisions = await router.decisions(lead_id)
    assert summary(decisions) == [("routed", 1, first.payload.buyer_id, Decimal("35.00"))]
    offer1 = decisions[0]
    assert isinstance(offer1, ev.LeadRouted)

    rejected = attempted(offer1, ev.DeliveryResult.REJECTED)
    await router.send((rejected, lead_id), (rejected, lead_id), (republished(rejected), lead_id))
    assert summary(await router.decisions(lead_id)) == [
        ("routed", 1, first.payload.buyer_id, Decimal("35.00")),
        ("routed", 2, second.payload.buyer_id, Decimal("50.00")),
    ]
    # ... and the same lead once more, after the waterfall moved on, changes nothing either.
    await router.send((received, lead_id), (republished(rejected), lead_id))
    assert len(await router.decisions(lead_id)) == 2
    assert await router.routing_state(lead_id) == (2, "routing")


async def test_sold_lead_leaves_the_waterfall(router: Router) -> None:
    campaign, first, _, _ = await campaign_with_waterfall(router)
    received = lead(campaign)
    lead_id = received.payload.lead_id
    await router.send((received, lead_id))
    (offer1,) = await router.decisions(lead_id)
    assert isinstance(offer1, ev.LeadRouted)
    assert offer1.payload.buyer_id == first.payload.buyer_id

    await router.send((attempted(offer1, ev.DeliveryResult.ACCEPTED), lead_id))
    assert await router.routing_state(lead_id) == (1, "sold")
    # A rejection arriving late (a stale or confused result) does not re-open the lead.
    await router.send((attempted(offer1, ev.DeliveryResult.REJECTED), lead_id))
    assert summary(await router.decisions(lead_id)) == [
        ("routed", 1, first.payload.buyer_id, Decimal("35.00"))
    ]
    assert await router.routing_state(lead_id) == (1, "sold")
