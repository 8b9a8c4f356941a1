"""Configuration and lead factories for the router's tests, and a fake key vault
(ingest's internal lead-key endpoint) for leads whose personal data routing must read."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from decimal import Decimal
from typing import Any

from aiokafka import AIOKafkaProducer
from lx_platform.crypto import new_data_key, seal_fields
from lx_platform.kafka import encode_key
from lx_schemas import events as ev
from lx_schemas import topic_for
from lx_schemas.envelope import Event
from lx_schemas.rules import Distribution, Margin, Payout
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

FIELDS = (
    ev.FieldSpec(name="email", type=ev.FieldType.EMAIL, pii=True),
    ev.FieldSpec(name="phone", type=ev.FieldType.PHONE, pii=True),
    ev.FieldSpec(name="state", type=ev.FieldType.US_STATE),
    ev.FieldSpec(name="zip", type=ev.FieldType.ZIP),
    ev.FieldSpec(name="dob", type=ev.FieldType.DATE, pii=True),
    ev.FieldSpec(name="credit_score", type=ev.FieldType.INTEGER),
)


class Vault:
    """Answers data keys it holds, 404 for the others (shredded), 503 while ``down``."""

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self.asked: list[str] = []
        self.down = False

    def app(self) -> Starlette:
        async def lead_key(request: Request) -> JSONResponse:
            key_id = request.path_params["key_id"]
            self.asked.append(key_id)
            if request.headers.get("x-lx-internal-token") != "dev-internal-token":
                return JSONResponse({"error": {"code": "unauthorized"}}, status_code=401)
            if self.down:
                return JSONResponse({"error": {"code": "unavailable"}}, status_code=503)
            if key_id not in self.keys:
                return JSONResponse({"error": {"code": "not_found"}}, status_code=404)
            data_key = base64.b64encode(self.keys[key_id]).decode()
            return JSONResponse({"key_id": key_id, "data_key": data_key})

        return Starlette(routes=[Route("/internal/v1/lead-keys/{key_id}", lead_key)])


class World:
    """One account's campaigns, sources and buyers, as config.changed events."""

    def __init__(self, vault: Vault | None = None) -> None:
        self.account = uuid.uuid4()
        self.vault = vault

    def campaign(
        self,
        *,
        max_sales: int = 1,
        mode: str = "waterfall",
        margin: Margin | None = None,
    ) -> ev.CampaignConfigured:
        campaign_id = uuid.uuid4()
        return ev.CampaignConfigured.new(
            account_id=self.account,
            correlation_id=campaign_id,
            producer="test",
            payload=ev.CampaignState(
                campaign_id=campaign_id,
                account_id=self.account,
                name="Auto insurance",
                vertical="auto_insurance",
                fields=FIELDS,
                distribution=Distribution.model_validate({"mode": mode, "max_sales": max_sales}),
                margin=margin or Margin(),
            ),
        )

    def source(self, campaign_id: uuid.UUID, payout: str = "10.00") -> ev.SourceConfigured:
        source_id = uuid.uuid4()
        return ev.SourceConfigured.new(
            account_id=self.account,
            correlation_id=source_id,
            producer="test",
            payload=ev.SourceState(
                source_id=source_id,
                account_id=self.account,
                campaign_id=campaign_id,
                name="Affiliate",
                api_key_prefix="lx_test",
                api_key_sha256=hashlib.sha256(source_id.bytes).hexdigest(),
                payout=Payout(fixed=Decimal(payout)),
            ),
        )

    def buyer(
        self, campaign_id: uuid.UUID, name: str, priority: int, price: str, **more: Any
    ) -> ev.BuyerConfigured:
        buyer_id = uuid.uuid4()
        state = {
            "buyer_id": buyer_id,
            "account_id": self.account,
            "campaign_id": campaign_id,
            "name": name,
            "endpoint_url": "http://127.0.0.1:9/leads",
            "price": Decimal(price),
            "priority": priority,
            **more,
        }
        return ev.BuyerConfigured.new(
            account_id=self.account,
            correlation_id=buyer_id,
            producer="test",
            payload=ev.BuyerState.model_validate(state),
        )

    def lead(
        self,
        campaign_id: uuid.UUID,
        source_id: uuid.UUID,
        *,
        email: str = "ann@example.com",
        phone: str = "+14155550100",
        dob: str = "1980-05-05",
        shredded: bool = False,
        **fields: ev.FieldValue,
    ) -> ev.LeadReceived:
        lead_id, key_id, key = uuid.uuid4(), uuid.uuid4(), new_data_key()
        if self.vault is not None and not shredded:
            self.vault.keys[str(key_id)] = key
        clear: dict[str, ev.FieldValue] = {"state": "CA", "zip": "94105", "credit_score": 700}
        content = ev.LeadContent(
            fields={**clear, **fields},
            pii=seal_fields(key, key_id, {"email": email, "phone": phone, "dob": dob}),
        )
        return ev.LeadReceived.new(
            account_id=self.account,
            correlation_id=lead_id,
            producer="test",
            payload=ev.LeadReceivedPayload(
                lead_id=lead_id, campaign_id=campaign_id, source_id=source_id, lead=content
            ),
        )

    def post(
        self,
        campaign_id: uuid.UUID,
        source_id: uuid.UUID,
        bids: list[tuple[uuid.UUID, str]],
        promised: str,
    ) -> ev.LeadReceived:
        """A ping-post post: the lead with its auction's bids, best first."""
        received = self.lead(campaign_id, source_id)
        payload = received.payload.model_copy(
            update={
                "ping_id": uuid.uuid4(),
                "bids": tuple(
                    ev.Bid(buyer_id=b, price=Decimal(p), bid_ref=f"bid-{i}")
                    for i, (b, p) in enumerate(bids)
                ),
                "promised_payout": Decimal(promised),
            }
        )
        return received.model_copy(update={"payload": payload})


def attempted(
    routed: ev.LeadRouted,
    result: ev.DeliveryResult,
    *,
    final: bool = True,
    try_number: int = 1,
    reason: str | None = None,
    reason_code: ev.RejectionCode | None = None,
) -> ev.DeliveryAttempted:
    """What the delivery service would say about ``routed``."""
    p = routed.payload
    if reason_code is None and result is ev.DeliveryResult.REJECTED:
        reason_code = ev.RejectionCode.BUYER_REJECTED
    elif reason_code is None and result is ev.DeliveryResult.ERROR:
        reason_code = ev.RejectionCode.BUYER_ERROR
    return ev.DeliveryAttempted.new(
        account_id=routed.account_id,
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
            reason=reason,
            reason_code=None if result is ev.DeliveryResult.ACCEPTED else reason_code,
            price=p.price if result is ev.DeliveryResult.ACCEPTED else None,
        ),
    )


async def publish_at_once(
    bootstrap: str, prefix: str, events: list[tuple[Event, uuid.UUID]]
) -> list[tuple[str, int, int]]:
    """Publish every event without waiting for each (one producer batch), so a consumer
    sees them arrive together; returns where each landed."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic_for(type(event)).qualified(prefix),
                event.to_json(),
                key=encode_key(key),
                headers=[(k, v.encode()) for k, v in event.headers().items()],
            )
            for event, key in events
        ]
        metas = await asyncio.gather(*futures)
        return [(m.topic, m.partition, m.offset) for m in metas]
    finally:
        await producer.stop()
