"""Buyer integrations end to end: the delivery service (real Kafka and PostgreSQL) posts
to fake buyers, real HTTP servers on loopback that insist on their own contract: an XML
body behind basic auth, a valid signature, a price and a lead id of their own in the
answer. And a buyer that keeps failing is paused by its circuit breaker, then probed
back."""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import pytest
from defusedxml import ElementTree as SafeET
from lx_delivery.main import create_service
from lx_delivery.settings import DeliverySettings
from lx_devstack.infra import Infra
from lx_integrations import signing
from lx_integrations.breaker import BreakerState
from lx_platform.crypto import new_data_key, seal_fields
from lx_platform.runtime import Runtime
from lx_platform.secrets import ConfigKeys
from lx_platform.settings import PlatformSettings
from lx_schemas import events as ev
from lx_schemas.envelope import Event, derived_id
from lx_schemas.integration import (
    Auth,
    AuthKind,
    BodyFormat,
    Captures,
    CircuitBreaker,
    Extract,
    FieldMapping,
    Integration,
    Outcome,
    Probe,
    ResponseRule,
    Transform,
)
from lx_schemas.rules import Payout
from lx_schemas.topics import DELIVERY_OUTCOME
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.http import ThreadedServer
from tests.support.services import eventually, serving, settings_for
from tests.support.settle import publish, read_all, wait_consumed, wait_relayed

ACCOUNT = uuid.uuid4()
SOURCE = uuid.uuid4()
INTERNAL_TOKEN = "dev-internal-token"
FIELDS: dict[str, ev.FieldValue] = {"state": "CA", "zip": "94105", "homeowner": True}
FLOOR = Decimal("20.00")
PAYOUT = Payout(percent=Decimal("50"))
USERNAME, PASSWORD = "acme-leads", "pa55-" + secrets.token_hex(8)
SIGNING_SECRET = "whsec_" + secrets.token_hex(24)
R = ev.DeliveryResult
C = ev.RejectionCode


# --- fake peers -----------------------------------------------------------------------------


class Vault:
    """Ingest's internal key endpoint: the lead data keys."""

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}

    def app(self) -> Starlette:
        async def lead_key(request: Request) -> JSONResponse:
            if request.headers.get("x-lx-internal-token") != INTERNAL_TOKEN:
                return JSONResponse({"error": {"code": "unauthorized"}}, status_code=401)
            key_id = request.path_params["key_id"]
            if key_id not in self.keys:
                return JSONResponse({"error": {"code": "not_found"}}, status_code=404)
            data_key = base64.b64encode(self.keys[key_id]).decode()
            return JSONResponse({"key_id": key_id, "data_key": data_key})

        return Starlette(routes=[Route("/internal/v1/lead-keys/{key_id}", lead_key)])


@dataclass
class Post:
    headers: dict[str, str]
    body: bytes
    signature_valid: bool


@dataclass
class Buyers:
    """Buyers with contracts of their own. ``/xml/<name>`` wants XML, basic auth and a
    valid signature, and names the price ``prices[name]`` with its own lead id;
    ``/flaky/<name>`` answers 500 while ``down`` holds its name."""

    posts: dict[str, list[Post]] = field(default_factory=dict)
    prices: dict[str, str] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)

    def app(self) -> Starlette:
        async def xml_buyer(request: Request) -> Response:
            name = request.path_params["name"]
            body = await request.body()
            headers = dict(request.headers)
            valid = signing.verify(
                SIGNING_SECRET,
                headers.get("x-leadexchange-delivery-id", ""),
                headers.get("x-leadexchange-timestamp", ""),
                body,
                headers.get("x-leadexchange-signature", ""),
            )
            self.posts.setdefault(name, []).append(Post(headers, body, valid))
            expected = "Basic " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
            if headers.get("authorization") != expected:
                return _xml("<response><status>denied</status></response>", 401)
            if not valid:
                return _xml("<response><status>bad_signature</status></response>", 401)
            if not headers.get("content-type", "").startswith("application/xml"):
                return _xml("<response><status>not_xml</status></response>", 415)
            lead = SafeET.fromstring(body)
            own_id = f"BUY-{lead.findtext('lead_ref', '')[:8]}"
            return _xml(
                "<response><status>accepted</status>"
                f"<price>{self.prices[name]}</price><id>{own_id}</id></response>"
            )

        async def flaky_buyer(request: Request) -> JSONResponse:
            name = request.path_params["name"]
            body = await request.body()
            self.posts.setdefault(name, []).append(Post(dict(request.headers), body, False))
            if name in self.down:
                return JSONResponse({"status": "error"}, status_code=500)
            return JSONResponse({"status": "accepted"})

        return Starlette(
            routes=[
                Route("/xml/{name}", xml_buyer, methods=["POST"]),
                Route("/flaky/{name}", flaky_buyer, methods=["POST"]),
            ]
        )


def _xml(content: str, status: int = 200) -> Response:
    return Response(content, status_code=status, media_type="application/xml")


# --- the service under test -----------------------------------------------------------------


@dataclass
class Stack:
    infra: Infra
    client: httpx.AsyncClient
    rt: Runtime
    prefix: str
    vault: Vault
    buyers: Buyers
    buyer_url: str
    config_keys: ConfigKeys

    async def send(self, *events: tuple[Event, uuid.UUID]) -> None:
        positions = await publish(self.infra.kafka_bootstrap, self.prefix, events)
        await wait_consumed(self.infra.kafka_bootstrap, f"{self.prefix}delivery", positions)

    async def configure(self, state: ev.BuyerState) -> ev.BuyerState:
        configured = ev.BuyerConfigured.new(
            account_id=ACCOUNT, correlation_id=state.buyer_id, producer="test", payload=state
        )
        await self.send((configured, state.buyer_id))
        return state

    def xml_buyer(self, price: str) -> ev.BuyerState:
        """Priced by its answer; wants an XML lead behind basic auth, signed."""
        name = f"xml-{uuid.uuid4().hex[:8]}"
        self.buyers.prices[name] = price
        integration = Integration(
            format=BodyFormat.XML,
            xml_root="lead",
            mappings=(
                FieldMapping(to="lead_ref", source="lead_id"),
                FieldMapping(to="contact.email", source="email", transform=Transform.UPPER),
                FieldMapping(to="contact.name", source="first_name"),
                FieldMapping(to="contact.phone", source="phone", transform=Transform.DIGITS),
                FieldMapping(to="address.state", source="state"),
                FieldMapping(to="owns_home", source="homeowner", transform=Transform.YES_NO),
                FieldMapping(to="vendor", static="leadexchange"),
            ),
            auth=Auth(
                kind=AuthKind.BASIC, username=USERNAME, secret=self.config_keys.seal(PASSWORD)
            ),
            rules=(
                ResponseRule(
                    probe=Probe(kind=Extract.XML_PATH, path="./status"),
                    equals=("accepted",),
                    outcome=Outcome.ACCEPTED,
                ),
            ),
            captures=Captures(
                price=Probe(kind=Extract.XML_PATH, path="./price"),
                buyer_lead_id=Probe(kind=Extract.XML_PATH, path="./id"),
                reason=Probe(kind=Extract.XML_PATH, path="./status"),
            ),
        )
        return ev.BuyerState(
            buyer_id=uuid.uuid4(),
            account_id=ACCOUNT,
            campaign_id=uuid.uuid4(),
            name=name,
            endpoint_url=f"{self.buyer_url}/xml/{name}",
            price=FLOOR,
            price_from_response=True,
            priority=1,
            integration=integration,
            signing_secret=self.config_keys.seal(SIGNING_SECRET),
        )

    def offer(
        self, buyer: ev.BuyerState, *, from_response: bool = False
    ) -> tuple[ev.LeadRouted, dict[str, str]]:
        lead_id, key_id, data_key = uuid.uuid4(), uuid.uuid4(), new_data_key()
        self.vault.keys[str(key_id)] = data_key
        pii = {"email": f"ann.{secrets.token_hex(4)}@example.com", "phone": "+14155550132"}
        pii["first_name"] = "Ann <&> O'Hara"
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
                price_from_response=from_response,
                payout=PAYOUT,
                lead=ev.LeadContent(fields=FIELDS, pii=seal_fields(data_key, key_id, pii)),
            ),
        )
        return routed, pii

    async def deliver(self, routed: ev.LeadRouted) -> list[Event]:
        """Send the offer, wait until its job is done and relayed; its outcome events."""
        await self.send((routed, routed.payload.lead_id))

        async def done() -> bool:
            async with self.rt.db.begin() as conn:
                status = await conn.scalar(
                    text("select status from deliveries where delivery_id = :d"),
                    {"d": routed.payload.delivery_id},
                )
            return bool(status == "done")

        await eventually(done, what="delivery done")
        await wait_relayed(self.rt)
        events = await read_all(self.infra.kafka_bootstrap, DELIVERY_OUTCOME.qualified(self.prefix))
        return [e for e in events if e.correlation_id == routed.payload.lead_id]

    async def trace(self, lead_id: uuid.UUID) -> list[dict[str, Any]]:
        answer = await self.client.get(
            f"/internal/v1/leads/{lead_id}/deliveries",
            headers={"x-lx-internal-token": INTERNAL_TOKEN},
        )
        assert answer.status_code == 200, answer.text
        deliveries: list[dict[str, Any]] = answer.json()["deliveries"]
        return deliveries

    async def breaker_gauge(self, buyer: ev.BuyerState) -> float | None:
        exposition = (await self.client.get("/metrics")).text
        for family in text_string_to_metric_families(exposition):
            for sample in family.samples:
                if sample.name == "lx_delivery_breaker_state" and sample.labels.get(
                    "buyer_id"
                ) == str(buyer.buyer_id):
                    return sample.value
        return None


@pytest.fixture(scope="module")
async def stack(infra: Infra, isolation: str) -> AsyncIterator[Stack]:
    vault, buyers = Vault(), Buyers()
    with ThreadedServer(vault.app()) as vault_server, ThreadedServer(buyers.app()) as server:
        settings = settings_for(
            DeliverySettings,
            infra,
            isolation,
            "delivery",
            platform=PlatformSettings(
                ingest_url=vault_server.url, egress_allow_cidrs=("127.0.0.1/32",)
            ),
            max_tries=2,
            retry_base_s=0.05,
        )
        config_keys = ConfigKeys.parse(settings.platform.config_keys.get_secret_value())
        async with serving(create_service(settings)) as (client, rt):
            yield Stack(
                infra,
                client,
                rt,
                settings.kafka.topic_prefix,
                vault,
                buyers,
                server.url,
                config_keys,
            )
            assert [c.dead_lettered for c in rt.consumers] == [0]


def payload(event: Event) -> dict[str, Any]:
    dumped: dict[str, Any] = event.payload.model_dump(exclude={"latency_ms"})
    return dumped


# --- tests ----------------------------------------------------------------------------------


async def test_xml_buyer_with_basic_auth_and_signature_buys_at_its_own_price(
    stack: Stack,
) -> None:
    buyer = await stack.configure(stack.xml_buyer(price="31.40"))
    routed, pii = stack.offer(buyer, from_response=True)
    p = routed.payload
    tried, sold = await stack.deliver(routed)

    # The buyer got its own format, authenticated and signed.
    (post,) = stack.buyers.posts[buyer.name]
    assert post.signature_valid
    assert post.headers["x-leadexchange-delivery-id"] == str(p.delivery_id)
    assert post.headers["idempotency-key"] == str(p.delivery_id)
    assert post.headers["content-type"].startswith("application/xml")
    lead = SafeET.fromstring(post.body)
    assert lead.tag == "lead"
    assert {e.tag: e.text for e in lead.iter() if len(e) == 0} == {
        "lead_ref": str(p.lead_id),
        "email": pii["email"].upper(),
        "name": "Ann <&> O'Hara",  # escaped on the wire, intact once parsed
        "phone": "14155550132",
        "state": "CA",
        "owns_home": "yes",
        "vendor": "leadexchange",
    }
    contact = lead.find("contact")
    assert contact is not None
    assert [child.tag for child in contact] == ["email", "name", "phone"]
    assert b"Ann &lt;&amp;&gt; O'Hara" in post.body

    # Sold at the price it named, the source paid per the routed rule (50 %).
    own_id = f"BUY-{str(p.lead_id)[:8]}"
    assert (tried.type, sold.type) == ("DeliveryAttempted", "LeadSold")
    assert payload(tried) == {
        "lead_id": p.lead_id,
        "campaign_id": p.campaign_id,
        "source_id": SOURCE,
        "buyer_id": buyer.buyer_id,
        "delivery_id": p.delivery_id,
        "attempt": 1,
        "try_number": 1,
        "final": True,
        "result": R.ACCEPTED,
        "http_status": 200,
        "reason": None,
        "reason_code": None,
        "price": Decimal("31.40"),
        "buyer_lead_id": own_id,
    }
    assert payload(sold) == {
        "lead_id": p.lead_id,
        "campaign_id": p.campaign_id,
        "source_id": SOURCE,
        "buyer_id": buyer.buyer_id,
        "delivery_id": p.delivery_id,
        "price": Decimal("31.40"),
        "payout": Decimal("15.70"),
        "sale": 1,
        "buyer_lead_id": own_id,
    }
    assert sold.event_id == derived_id("lead.sold", p.lead_id, 1)

    # The stored request keeps no credential in clear, and the trace shows what was paid.
    (delivery,) = await stack.trace(p.lead_id)
    (attempt,) = delivery["tries"]
    assert attempt["request"]["headers"]["Authorization"] == "[redacted]"
    assert attempt["request"]["headers"]["X-LeadExchange-Signature"].startswith("v1=")
    assert (attempt["price"], attempt["buyer_lead_id"], attempt["reason_code"]) == (
        "31.40",
        own_id,
        None,
    )
    async with stack.rt.db.begin() as conn:
        stored = await conn.execute(
            text("select request_sealed from delivery_tries where delivery_id = :d"),
            {"d": p.delivery_id},
        )
        (sealed,) = stored.one()
    assert PASSWORD.encode() not in bytes(sealed)
    assert PASSWORD not in str(attempt["request"])


async def test_a_price_below_the_floor_is_a_rejection_and_nothing_is_sold(stack: Stack) -> None:
    buyer = await stack.configure(stack.xml_buyer(price="12.00"))
    routed, _ = stack.offer(buyer, from_response=True)
    (tried,) = await stack.deliver(routed)

    assert len(stack.buyers.posts[buyer.name]) == 1
    got = payload(tried)
    assert (got["result"], got["final"], got["reason_code"], got["reason"], got["price"]) == (
        R.REJECTED,
        True,
        C.PRICE_BELOW_FLOOR,
        "price 12.00 is below the floor 20.00",
        None,
    )
    assert got["buyer_lead_id"] == f"BUY-{str(routed.payload.lead_id)[:8]}"


async def test_a_failing_buyer_is_paused_by_its_breaker_then_probed_back(stack: Stack) -> None:
    state = flaky_buyer(stack)
    name = state.name
    stack.buyers.down.add(name)
    buyer = await stack.configure(state)
    posts = stack.buyers.posts.setdefault(name, [])
    breakers = stack.rt.extras["worker"].breakers

    # Two 500s in a row (the offer's two tries) open the breaker.
    first, _ = stack.offer(buyer)
    events = await stack.deliver(first)
    assert [(e.payload.result, e.payload.http_status, e.payload.final) for e in events] == [
        (R.ERROR, 500, False),
        (R.ERROR, 500, True),
    ]
    assert len(posts) == 2
    assert breakers.state(str(buyer.buyer_id), buyer.breaker) is BreakerState.OPEN
    assert await stack.breaker_gauge(buyer) == 2  # open

    # While open, an offer is concluded at once, never sent: routing moves on.
    second, _ = stack.offer(buyer)
    (tried,) = await stack.deliver(second)
    assert (
        tried.payload.result,
        tried.payload.final,
        tried.payload.reason_code,
        tried.payload.http_status,
    ) == (R.ERROR, True, C.CIRCUIT_OPEN, None)
    assert len(posts) == 2

    # After the cool-down one probe goes through; the buyer is back, so it closes.
    stack.buyers.down.discard(name)

    async def half_open() -> bool:
        return breakers.state(str(buyer.buyer_id), buyer.breaker) is BreakerState.HALF_OPEN

    await eventually(half_open, what="breaker half-open")
    third, _ = stack.offer(buyer)
    tried, sold = await stack.deliver(third)
    assert (tried.payload.result, sold.type) == (R.ACCEPTED, "LeadSold")
    assert len(posts) == 3
    assert breakers.state(str(buyer.buyer_id), buyer.breaker) is BreakerState.CLOSED
    assert await stack.breaker_gauge(buyer) == 0  # closed

    fourth, _ = stack.offer(buyer)
    assert [e.type for e in await stack.deliver(fourth)] == ["DeliveryAttempted", "LeadSold"]
    assert len(posts) == 4


def flaky_buyer(stack: Stack) -> ev.BuyerState:
    name = f"flaky-{uuid.uuid4().hex[:8]}"
    return ev.BuyerState(
        buyer_id=uuid.uuid4(),
        account_id=ACCOUNT,
        campaign_id=uuid.uuid4(),
        name=name,
        endpoint_url=f"{stack.buyer_url}/flaky/{name}",
        price=Decimal("35.00"),
        priority=1,
        breaker=CircuitBreaker(failures=2, cool_down_s=1),
    )


async def test_a_multi_sell_lead_is_sold_once_per_sale(stack: Stack) -> None:
    first_buyer = await stack.configure(flaky_buyer(stack))
    second_buyer = await stack.configure(flaky_buyer(stack))
    first, _ = stack.offer(first_buyer)
    p = first.payload
    second = ev.LeadRouted.new(
        account_id=ACCOUNT,
        correlation_id=p.lead_id,
        producer="test",
        payload=p.model_copy(
            update={
                "buyer_id": second_buyer.buyer_id,
                "attempt": 2,
                "delivery_id": derived_id("delivery", p.lead_id, second_buyer.buyer_id, 2),
                "sale": 2,
            }
        ),
    )
    await stack.deliver(first)
    events = await stack.deliver(second)

    sales = [e for e in events if isinstance(e, ev.LeadSold)]
    assert [(e.payload.sale, e.payload.buyer_id, e.payload.payout) for e in sales] == [
        (1, first_buyer.buyer_id, Decimal("17.50")),
        (2, second_buyer.buyer_id, Decimal("17.50")),
    ]
    assert [e.event_id for e in sales] == [
        derived_id("lead.sold", p.lead_id, 1),
        derived_id("lead.sold", p.lead_id, 2),
    ]


async def test_an_exhausted_lead_that_was_sold_before_is_not_unsold(stack: Stack) -> None:
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
            attempts=3,
            sales=1,  # multi-sell: sold once, no further buyer took it
        ),
    )
    await stack.send((exhausted, lead_id))
    await wait_relayed(stack.rt)
    events = await read_all(stack.infra.kafka_bootstrap, DELIVERY_OUTCOME.qualified(stack.prefix))
    assert [e for e in events if e.correlation_id == lead_id] == []
