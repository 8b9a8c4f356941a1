"""The delivery service against real Kafka and PostgreSQL, a fake buyer on loopback and a
fake key vault: each routing decision reaches its buyer at most once (retries carry the same
delivery id), PII is opened only for the buyer, logs are sealed, outcomes are exact."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest
from lx_delivery.main import create_service
from lx_delivery.settings import DeliverySettings
from lx_devstack.buyer import create_buyer_app
from lx_devstack.infra import Infra
from lx_platform.crypto import new_data_key, seal_fields
from lx_platform.runtime import Runtime
from lx_platform.settings import PlatformSettings
from lx_schemas import events as ev
from lx_schemas.envelope import Event, derived_id
from lx_schemas.rules import Payout
from lx_schemas.topics import DELIVERY_OUTCOME, USAGE_INCREMENTED
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Mount, Route

from tests.support.http import ThreadedServer
from tests.support.services import eventually, serving, settings_for
from tests.support.settle import (
    publish,
    read_all,
    republished,
    wait_consumed,
    wait_relayed,
)

ACCOUNT = uuid.uuid4()
SOURCE = uuid.uuid4()
INTERNAL = {"x-lx-internal-token": "dev-internal-token"}
FIELDS: dict[str, ev.FieldValue] = {
    "state": "CA",
    "zip": "94105",
    "loan_amount": 250000,
    "homeowner": True,
}
R = ev.DeliveryResult
C = ev.RejectionCode
PAYOUT = Payout(percent=Decimal("60"))


# --- a fake key vault (ingest's internal key endpoint) --------------------------------------


class Vault:
    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self.asked: list[tuple[str, str | None]] = []  # key id, internal token presented

    def app(self) -> Starlette:
        async def lead_key(request: Request) -> JSONResponse:
            key_id = request.path_params["key_id"]
            token = request.headers.get("x-lx-internal-token")
            self.asked.append((key_id, token))
            if token != INTERNAL["x-lx-internal-token"]:
                return JSONResponse({"error": {"code": "unauthorized"}}, status_code=401)
            if key_id not in self.keys:  # shredded (or never existed)
                return JSONResponse({"error": {"code": "not_found"}}, status_code=404)
            data_key = base64.b64encode(self.keys[key_id]).decode()
            return JSONResponse({"key_id": key_id, "data_key": data_key})

        return Starlette(routes=[Route("/internal/v1/lead-keys/{key_id}", lead_key)])


class Trickler:
    """A hostile buyer: answers 200 at once, then drips its body a byte at a time for 5 s."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str]] = []  # buyer name, delivery id header

    async def post(self, request: Request) -> StreamingResponse:
        self.received.append(
            (request.path_params["name"], request.headers["x-leadexchange-delivery-id"])
        )

        async def drip() -> AsyncIterator[bytes]:
            for _ in range(50):
                yield b" "
                await asyncio.sleep(0.1)
            yield b'{"status": "accepted"}'

        return StreamingResponse(drip(), media_type="application/json")


# --- the service under test with its peers --------------------------------------------------


@dataclass
class Offer:
    routed: ev.LeadRouted
    pii: dict[str, str]

    @property
    def lead_id(self) -> uuid.UUID:
        return self.routed.payload.lead_id

    @property
    def delivery_id(self) -> uuid.UUID:
        return self.routed.payload.delivery_id

    @property
    def key_id(self) -> uuid.UUID:
        assert self.routed.payload.lead.pii is not None
        return self.routed.payload.lead.pii.key_id

    def buyer_body(self) -> dict[str, Any]:
        """What the buyer must receive: the lead with its PII opened."""
        return {
            "lead_id": str(self.lead_id),
            "delivery_id": str(self.delivery_id),
            "price": "35.00",
            **FIELDS,
            **self.pii,
        }


@dataclass
class Stack:
    infra: Infra
    client: httpx.AsyncClient
    rt: Runtime
    prefix: str
    vault: Vault
    buyer_url: str
    trickler: Trickler

    @property
    def bootstrap(self) -> str:
        return self.infra.kafka_bootstrap

    async def send(self, *events: tuple[Event, uuid.UUID]) -> None:
        """Publish and wait until delivery consumed them (its transaction committed)."""
        positions = await publish(self.bootstrap, self.prefix, events)
        await wait_consumed(self.bootstrap, f"{self.prefix}delivery", positions)

    async def buyer(
        self, mode: str, *, timeout_ms: int = 5_000, under: str = "buyers"
    ) -> ev.BuyerState:
        name = f"{mode}-{uuid.uuid4().hex[:8]}"
        state = ev.BuyerState(
            buyer_id=uuid.uuid4(),
            account_id=ACCOUNT,
            campaign_id=uuid.uuid4(),
            name=name,
            endpoint_url=f"{self.buyer_url}/{under}/{name}/{mode}",
            price=Decimal("35.00"),
            priority=1,
            timeout_ms=timeout_ms,
        )
        configured = ev.BuyerConfigured.new(
            account_id=ACCOUNT, correlation_id=state.buyer_id, producer="test", payload=state
        )
        await self.send((configured, state.buyer_id))
        return state

    def offer(self, buyer: ev.BuyerState, *, with_key: bool = True) -> Offer:
        """A routing decision for a new lead whose PII is sealed under its own key."""
        lead_id, key_id, data_key = uuid.uuid4(), uuid.uuid4(), new_data_key()
        if with_key:
            self.vault.keys[str(key_id)] = data_key
        pii = {
            "email": f"ann.{secrets.token_hex(4)}@example.com",
            "phone": "4155550132",
            "first_name": "Augusta",
        }
        routed = ev.LeadRouted.new(
            account_id=ACCOUNT,
            correlation_id=lead_id,
            producer="test",
            payload=ev.LeadRoutedPayload(
                lead_id=lead_id,
                campaign_id=buyer.campaign_id,
                source_id=SOURCE,
                buyer_id=buyer.buyer_id,
                attempt=1,
                delivery_id=derived_id("delivery", lead_id, buyer.buyer_id, 1),
                price=buyer.price,
                payout=PAYOUT,
                lead=ev.LeadContent(fields=FIELDS, pii=seal_fields(data_key, key_id, pii)),
            ),
        )
        return Offer(routed, pii)

    async def settled(self, offer: Offer) -> None:
        """Until the offer's delivery is done and everything it decided is on Kafka."""

        async def done() -> bool:
            async with self.rt.db.begin() as conn:
                status = await conn.scalar(
                    text("select status from deliveries where delivery_id = :d"),
                    {"d": offer.delivery_id},
                )
            return status == "done"

        await eventually(done, what=f"delivery {offer.delivery_id} done")
        await wait_relayed(self.rt)

    async def outcomes(self, lead_id: uuid.UUID) -> list[Event]:
        events = await read_all(self.bootstrap, DELIVERY_OUTCOME.qualified(self.prefix))
        return [e for e in events if e.correlation_id == lead_id]

    async def usage(self, lead_id: uuid.UUID) -> list[ev.UsageIncremented]:
        events = await read_all(self.bootstrap, USAGE_INCREMENTED.qualified(self.prefix))
        usage = [e for e in events if isinstance(e, ev.UsageIncremented)]
        return [e for e in usage if e.payload.subject_id == lead_id]

    async def received(self, buyer: ev.BuyerState) -> list[dict[str, Any]]:
        """What the fake buyer got, in arrival order."""
        async with httpx.AsyncClient() as client:
            answer = await client.get(
                f"{self.buyer_url}/received", params={"buyer": buyer.name, "full": "1"}
            )
        answer.raise_for_status()
        rows: list[dict[str, Any]] = answer.json()
        return rows

    async def jobs(self, lead_id: uuid.UUID) -> list[tuple[uuid.UUID, str, int, str | None]]:
        async with self.rt.db.begin() as conn:
            rows = await conn.execute(
                text(
                    "select delivery_id, status, tries, result from deliveries"
                    " where lead_id = :l order by attempt"
                ),
                {"l": lead_id},
            )
            return [(r.delivery_id, r.status, r.tries, r.result) for r in rows]

    async def trace(self, lead_id: uuid.UUID) -> list[dict[str, Any]]:
        answer = await self.client.get(f"/internal/v1/leads/{lead_id}/deliveries", headers=INTERNAL)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["lead_id"] == str(lead_id)
        deliveries: list[dict[str, Any]] = body["deliveries"]
        return deliveries


@pytest.fixture(scope="module")
async def stack(infra: Infra, isolation: str) -> AsyncIterator[Stack]:
    vault, trickler = Vault(), Trickler()
    buyers = Starlette(
        routes=[
            Route("/trickle/{name}/{mode}", trickler.post, methods=["POST"]),
            Mount("/", create_buyer_app()),
        ]
    )
    with ThreadedServer(vault.app()) as vault_server, ThreadedServer(buyers) as buyer:
        settings = settings_for(
            DeliverySettings,
            infra,
            isolation,
            "delivery",
            # The fake buyer is on loopback, which only the allow-list opens.
            platform=PlatformSettings(
                ingest_url=vault_server.url, egress_allow_cidrs=("127.0.0.1/32",)
            ),
            max_tries=2,
            retry_base_s=0.05,
        )
        try:
            async with serving(create_service(settings)) as (client, rt):
                yield Stack(
                    infra, client, rt, settings.kafka.topic_prefix, vault, buyer.url, trickler
                )
                assert [c.dead_lettered for c in rt.consumers] == [0]
        finally:
            # "hang" and trickling requests do not end by themselves: do not wait for them.
            buyer.server.force_exit = True


# --- tests ----------------------------------------------------------------------------------


def attempted(offer: Offer, **expected: Any) -> dict[str, Any]:
    """A DeliveryAttempted payload as a dict: the offer's identity plus ``expected``."""
    p = offer.routed.payload
    identity = {
        "lead_id": p.lead_id,
        "campaign_id": p.campaign_id,
        "source_id": p.source_id,
        "buyer_id": p.buyer_id,
        "delivery_id": p.delivery_id,
        "attempt": 1,
        "reason_code": None,
        "buyer_lead_id": None,
    }
    return {**identity, **expected}


def payloads(events: list[Event]) -> list[tuple[str, dict[str, Any]]]:
    """Events as (type, payload) with latency left out (it is measured, not decided)."""
    return [(e.type, e.payload.model_dump(exclude={"latency_ms"})) for e in events]


async def test_accepted_lead_reaches_the_buyer_decrypted_and_is_sold_once(stack: Stack) -> None:
    buyer = await stack.buyer("accept")
    offer = stack.offer(buyer)
    await stack.send((offer.routed, offer.lead_id))
    await stack.settled(offer)

    # The buyer got the lead once, its PII opened, under the routing decision's delivery id.
    (post,) = await stack.received(buyer)
    assert post["delivery_id"] == str(offer.delivery_id)
    assert post["lead"] == offer.buyer_body()
    assert stack.vault.asked == [*stack.vault.asked[:-1], (str(offer.key_id), "dev-internal-token")]

    outcomes = await stack.outcomes(offer.lead_id)
    assert payloads(outcomes) == [
        (
            "DeliveryAttempted",
            attempted(
                offer,
                try_number=1,
                final=True,
                result=R.ACCEPTED,
                http_status=200,
                reason=None,
                price=Decimal("35.00"),
            ),
        ),
        (
            "LeadSold",
            {
                "lead_id": offer.lead_id,
                "campaign_id": buyer.campaign_id,
                "source_id": SOURCE,
                "buyer_id": buyer.buyer_id,
                "delivery_id": offer.delivery_id,
                "price": Decimal("35.00"),
                "payout": Decimal("21.00"),  # 60 % of the price paid
                "sale": 1,
                "buyer_lead_id": None,
            },
        ),
    ]
    tried, sold = outcomes
    assert tried.event_id == derived_id("delivery.attempted", offer.delivery_id, 1)
    assert sold.event_id == derived_id("lead.sold", offer.lead_id, 1)
    assert sold.causation_id == tried.event_id
    (usage,) = await stack.usage(offer.lead_id)
    assert usage.account_id == ACCOUNT
    assert usage.payload == ev.UsageIncrementedPayload(
        metric=ev.UsageMetric.LEADS_SOLD, quantity=1, subject_id=offer.lead_id
    )
    assert await stack.jobs(offer.lead_id) == [(offer.delivery_id, "done", 1, "accepted")]

    # At rest the request/response log is sealed under the lead's key: no PII in clear.
    async with stack.rt.db.begin() as conn:
        row = (
            await conn.execute(
                text(
                    "select key_id, request_sealed, response_sealed from delivery_tries"
                    " where delivery_id = :d"
                ),
                {"d": offer.delivery_id},
            )
        ).one()
        stored_lead = await conn.scalar(
            text("select lead::text from deliveries where delivery_id = :d"),
            {"d": offer.delivery_id},
        )
    assert row.key_id == offer.key_id
    request_sealed, response_sealed = bytes(row.request_sealed), bytes(row.response_sealed)
    for clear in (offer.pii["email"], "4155550132", "Augusta", str(offer.delivery_id)):
        assert clear.encode() not in request_sealed
        assert clear not in stored_lead
    assert b"accepted" not in response_sealed

    # ... and the lead trace opens it for operators.
    (delivery,) = await stack.trace(offer.lead_id)
    summary = {
        k: delivery[k] for k in ("delivery_id", "buyer_id", "attempt", "price", "status", "result")
    }
    assert summary == {
        "delivery_id": str(offer.delivery_id),
        "buyer_id": str(buyer.buyer_id),
        "attempt": 1,
        "price": "35.00",
        "status": "done",
        "result": "accepted",
    }
    (tried_row,) = delivery["tries"]
    assert (
        tried_row["try_number"],
        tried_row["result"],
        tried_row["http_status"],
        tried_row["reason"],
    ) == (1, "accepted", 200, None)
    request = tried_row["request"]
    assert (request["method"], request["url"]) == ("POST", str(buyer.endpoint_url))
    assert request["headers"]["X-LeadExchange-Delivery-Id"] == str(offer.delivery_id)
    assert json.loads(request["body"]) == offer.buyer_body()
    assert tried_row["response"]["status"] == 200
    assert json.loads(tried_row["response"]["body"])["status"] == "accepted"

    # The trace is internal only.
    anonymous = await stack.client.get(f"/internal/v1/leads/{offer.lead_id}/deliveries")
    assert anonymous.status_code == 401


async def test_rejected_lead_is_reported_with_the_buyers_reason_and_not_sold(
    stack: Stack,
) -> None:
    buyer = await stack.buyer("reject")
    offer = stack.offer(buyer)
    await stack.send((offer.routed, offer.lead_id))
    await stack.settled(offer)

    assert [p["delivery_id"] for p in await stack.received(buyer)] == [str(offer.delivery_id)]
    assert payloads(await stack.outcomes(offer.lead_id)) == [
        (
            "DeliveryAttempted",
            attempted(
                offer,
                try_number=1,
                final=True,
                result=R.REJECTED,
                http_status=200,
                reason="not buying this one",
                reason_code=C.BUYER_REJECTED,
                price=None,
            ),
        ),
    ]
    assert await stack.usage(offer.lead_id) == []
    assert await stack.jobs(offer.lead_id) == [(offer.delivery_id, "done", 1, "rejected")]


async def test_flaky_buyer_is_retried_with_the_same_delivery_id_until_it_accepts(
    stack: Stack,
) -> None:
    buyer = await stack.buyer("flaky")
    offer = stack.offer(buyer)
    await stack.send((offer.routed, offer.lead_id))
    await stack.settled(offer)

    posts = await stack.received(buyer)
    assert [p["delivery_id"] for p in posts] == [str(offer.delivery_id)] * 2
    assert [p["lead"] for p in posts] == [offer.buyer_body()] * 2
    outcomes = await stack.outcomes(offer.lead_id)
    assert payloads(outcomes) == [
        (
            "DeliveryAttempted",
            attempted(
                offer,
                try_number=1,
                final=False,
                result=R.ERROR,
                http_status=503,
                reason="http_503",
                reason_code=C.BUYER_ERROR,
                price=None,
            ),
        ),
        (
            "DeliveryAttempted",
            attempted(
                offer,
                try_number=2,
                final=True,
                result=R.ACCEPTED,
                http_status=200,
                reason=None,
                price=Decimal("35.00"),
            ),
        ),
        (
            "LeadSold",
            {
                "lead_id": offer.lead_id,
                "campaign_id": buyer.campaign_id,
                "source_id": SOURCE,
                "buyer_id": buyer.buyer_id,
                "delivery_id": offer.delivery_id,
                "price": Decimal("35.00"),
                "payout": Decimal("21.00"),  # 60 % of the price paid
                "sale": 1,
                "buyer_lead_id": None,
            },
        ),
    ]
    assert len(await stack.usage(offer.lead_id)) == 1
    assert await stack.jobs(offer.lead_id) == [(offer.delivery_id, "done", 2, "accepted")]
    (delivery,) = await stack.trace(offer.lead_id)
    assert [(t["try_number"], t["result"], t["http_status"]) for t in delivery["tries"]] == [
        (1, "error", 503),
        (2, "accepted", 200),
    ]
    assert [t["request"]["headers"]["X-LeadExchange-Delivery-Id"] for t in delivery["tries"]] == [
        str(offer.delivery_id)
    ] * 2


async def test_hanging_buyer_is_an_unknown_outcome_retried_with_the_same_id_then_an_error(
    stack: Stack,
) -> None:
    buyer = await stack.buyer("hang", timeout_ms=300)
    offer = stack.offer(buyer)
    await stack.send((offer.routed, offer.lead_id))
    await stack.settled(offer)

    assert [p["delivery_id"] for p in await stack.received(buyer)] == [str(offer.delivery_id)] * 2
    outcomes = await stack.outcomes(offer.lead_id)
    assert payloads(outcomes) == [
        (
            "DeliveryAttempted",
            attempted(
                offer,
                try_number=1,
                final=False,
                result=R.OUTCOME_UNKNOWN,
                http_status=None,
                reason="deadline_exceeded",
                reason_code=C.BUYER_ERROR,
                price=None,
            ),
        ),
        (
            "DeliveryAttempted",
            attempted(
                offer,
                try_number=2,
                final=True,
                result=R.ERROR,
                http_status=None,
                reason="outcome_unknown_unresolved: deadline_exceeded",
                reason_code=C.OUTCOME_UNKNOWN_UNRESOLVED,
                price=None,
            ),
        ),
    ]
    # Each try waited out the buyer's timeout (it did not fail fast) and no longer.
    assert [250 < e.payload.latency_ms < 2_000 for e in outcomes] == [True, True]
    assert await stack.jobs(offer.lead_id) == [(offer.delivery_id, "done", 2, "error")]
    # The trace keeps what is known: both tries were sent and never answered.
    (delivery,) = await stack.trace(offer.lead_id)
    assert [(t["result"], t["http_status"], t["response"]) for t in delivery["tries"]] == [
        ("outcome_unknown", None, {"status": None, "body": ""}),
        ("outcome_unknown", None, {"status": None, "body": ""}),
    ]


async def test_buyer_trickling_its_answer_is_cut_off_at_its_timeout(stack: Stack) -> None:
    buyer = await stack.buyer("accept", timeout_ms=300, under="trickle")
    offer = stack.offer(buyer)
    await stack.send((offer.routed, offer.lead_id))
    await stack.settled(offer)

    assert [r for r in stack.trickler.received if r[0] == buyer.name] == [
        (buyer.name, str(offer.delivery_id))
    ] * 2
    outcomes = await stack.outcomes(offer.lead_id)
    assert payloads(outcomes) == [
        (
            "DeliveryAttempted",
            attempted(
                offer,
                try_number=1,
                final=False,
                result=R.OUTCOME_UNKNOWN,
                http_status=200,
                reason="deadline_exceeded",
                reason_code=C.BUYER_ERROR,
                price=None,
            ),
        ),
        (
            "DeliveryAttempted",
            attempted(
                offer,
                try_number=2,
                final=True,
                result=R.ERROR,
                http_status=200,
                reason="outcome_unknown_unresolved: deadline_exceeded",
                reason_code=C.OUTCOME_UNKNOWN_UNRESOLVED,
                price=None,
            ),
        ),
    ]
    # Each try ends at the buyer's timeout, not when the 5 s drip would have ended.
    assert [e.payload.latency_ms < 2_000 for e in outcomes] == [True, True]
    assert await stack.jobs(offer.lead_id) == [(offer.delivery_id, "done", 2, "error")]


async def test_duplicated_routing_decision_is_delivered_once(stack: Stack) -> None:
    buyer = await stack.buyer("accept")
    offer = stack.offer(buyer)
    # Redelivered by Kafka (same event id), and replayed under a new event id.
    await stack.send(
        (offer.routed, offer.lead_id),
        (offer.routed, offer.lead_id),
        (republished(offer.routed), offer.lead_id),
    )
    await stack.settled(offer)

    assert len(await stack.received(buyer)) == 1
    assert await stack.jobs(offer.lead_id) == [(offer.delivery_id, "done", 1, "accepted")]
    assert [e.type for e in await stack.outcomes(offer.lead_id)] == [
        "DeliveryAttempted",
        "LeadSold",
    ]
    assert len(await stack.usage(offer.lead_id)) == 1


REJECTIONS = (
    ev.Rejection(code=C.BUYER_REJECTED, detail="not buying this one", buyer_id=uuid.uuid4()),
    ev.Rejection(code=C.SCHEDULE_CLOSED, detail="closed at this hour", buyer_id=uuid.uuid4()),
)


async def test_exhausted_routing_makes_the_lead_unsold_exactly_once(stack: Stack) -> None:
    lead_id, campaign = uuid.uuid4(), uuid.uuid4()
    exhausted = ev.LeadRoutingExhausted.new(
        account_id=ACCOUNT,
        correlation_id=lead_id,
        producer="test",
        payload=ev.LeadRoutingExhaustedPayload(
            lead_id=lead_id,
            campaign_id=campaign,
            source_id=SOURCE,
            reason=ev.ExhaustionReason.ALL_BUYERS_DECLINED,
            attempts=2,
            rejections=REJECTIONS,
        ),
    )
    await stack.send((exhausted, lead_id), (exhausted, lead_id), (republished(exhausted), lead_id))
    await wait_relayed(stack.rt)

    outcomes = await stack.outcomes(lead_id)
    assert payloads(outcomes) == [
        (
            "LeadUnsold",
            {
                "lead_id": lead_id,
                "campaign_id": campaign,
                "source_id": SOURCE,
                "reason": ev.ExhaustionReason.ALL_BUYERS_DECLINED,
                "rejections": tuple(r.model_dump() for r in REJECTIONS),
            },
        ),
    ]
    assert outcomes[0].event_id == derived_id("lead.unsold", lead_id)
    assert outcomes[0].causation_id == exhausted.event_id
    assert await stack.jobs(lead_id) == []


async def test_shredded_key_fails_the_delivery_and_sends_nothing(stack: Stack) -> None:
    buyer = await stack.buyer("accept")
    offer = stack.offer(buyer, with_key=False)  # the vault answers 404: crypto-shredded
    await stack.send((offer.routed, offer.lead_id))
    await stack.settled(offer)

    assert (str(offer.key_id), "dev-internal-token") in stack.vault.asked
    assert await stack.received(buyer) == []
    assert payloads(await stack.outcomes(offer.lead_id)) == [
        (
            "DeliveryAttempted",
            attempted(
                offer,
                try_number=1,
                final=True,
                result=R.ERROR,
                http_status=None,
                reason="pii_shredded",
                reason_code=C.BUYER_ERROR,
                price=None,
            ),
        ),
    ]
    assert await stack.jobs(offer.lead_id) == [(offer.delivery_id, "done", 1, "error")]
    (delivery,) = await stack.trace(offer.lead_id)
    assert [(t["result"], t["reason"], t["request"], t["response"]) for t in delivery["tries"]] == [
        ("error", "pii_shredded", None, None)
    ]
