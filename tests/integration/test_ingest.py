"""The ingest gateway in-process against real Kafka and PostgreSQL.

Configuration arrives the way it does in production: ``CampaignConfigured`` and
``SourceConfigured`` on ``config.changed``. Each test configures its own account,
campaign and sources, so the tests share one running service but no state.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from lx_devstack.infra import Infra
from lx_platform.crypto import open_fields
from lx_schemas import decode_event, derived_id
from lx_schemas import events as ev
from lx_schemas.topics import LEAD_RECEIVED, USAGE_INCREMENTED
from sqlalchemy import text

from tests.support.ingest import LEAD, Service, configure, running_ingest, source_configured
from tests.support.kafka import publish, read_to_end
from tests.support.services import eventually

INTERNAL = {"x-lx-internal-token": "dev-internal-token"}
# What of LEAD must never appear in clear on a topic, in any spelling.
PLAINTEXT = [b"ada.lovelace", b"Ada.Lovelace", b"4155550132", b"555-0132", b"Augusta"]


@pytest.fixture(scope="module")
async def ingest(infra: Infra, isolation: str) -> AsyncIterator[Service]:
    async with running_ingest(infra, isolation) as service:
        yield service


# --- tests ----------------------------------------------------------------------------------


async def test_a_valid_lead_is_in_kafka_with_its_pii_sealed_and_its_usage_counted(
    ingest: Service,
) -> None:
    src, other = await configure(ingest, sources=2)

    r = await ingest.client.post("/v1/leads", json=LEAD, headers=src.auth)

    assert r.status_code == 202, r.text
    body = r.json()
    lead_id = uuid.UUID(body["lead_id"])
    assert body["status"] == "received"

    # lead.received: exactly one record, keyed by the lead id, no PII in clear anywhere.
    topic = LEAD_RECEIVED.qualified(ingest.prefix)
    records = await read_to_end(ingest.bootstrap, topic)
    mine = [r for r in records if r.key == str(lead_id).encode()]
    assert len(mine) == 1
    raw = mine[0].value
    for plain in PLAINTEXT:
        assert plain not in raw, f"{plain!r} travels in clear on lead.received"
    assert {k: v.decode() for k, v in mine[0].headers}["lx-event-type"] == "LeadReceived"
    received = decode_event(raw)
    assert isinstance(received, ev.LeadReceived)
    assert received.event_id == derived_id("lead.received", lead_id)
    assert received.account_id == src.account_id
    assert received.correlation_id == lead_id
    p = received.payload
    assert (p.lead_id, p.campaign_id, p.source_id) == (lead_id, src.campaign_id, src.source_id)
    assert p.lead.fields == {
        "state": "CA",
        "zip": "94105",
        "loan_amount": 250000,
        "homeowner": True,
    }
    sealed = p.lead.pii
    assert sealed is not None
    assert sealed.field_names == ("email", "first_name", "phone")

    # The PII opens with the lead's own key from the vault, and only for internal callers.
    url = f"/internal/v1/lead-keys/{sealed.key_id}"
    assert (await ingest.client.get(url)).status_code == 401
    assert (
        await ingest.client.get(url, headers={"x-lx-internal-token": "wrong"})
    ).status_code == 401
    key = await ingest.client.get(url, headers=INTERNAL)
    assert key.status_code == 200, key.text
    data_key = base64.b64decode(key.json()["data_key"])
    assert open_fields(data_key, sealed) == {
        "email": "ada.lovelace@example.com",
        "phone": "+14155550132",
        "first_name": "Augusta",
    }
    # Several at once (delivery's batch of jobs): known ids answered, unknown ones left out.
    lookup = "/internal/v1/lead-keys/lookup"
    unknown = uuid.uuid4()
    body = {"key_ids": [str(sealed.key_id), str(unknown)]}
    assert (await ingest.client.post(lookup, json=body)).status_code == 401
    many = await ingest.client.post(lookup, json=body, headers=INTERNAL)
    assert many.status_code == 200, many.text
    assert many.json()["keys"] == {str(sealed.key_id): key.json()["data_key"]}
    too_many = {"key_ids": [str(uuid.uuid4()) for _ in range(501)]}
    assert (await ingest.client.post(lookup, json=too_many, headers=INTERNAL)).status_code == 422

    # usage.incremented: one leads_received for this lead, keyed by the account.
    usage = await ingest.records(USAGE_INCREMENTED, key=src.account_id)
    assert len(usage) == 1
    (used,) = usage
    assert isinstance(used, ev.UsageIncremented)
    assert used.payload == ev.UsageIncrementedPayload(
        metric=ev.UsageMetric.LEADS_RECEIVED, quantity=1, subject_id=lead_id
    )
    assert (used.account_id, used.causation_id) == (src.account_id, received.event_id)

    # The source sees its lead; another source of the same campaign does not.
    status = await ingest.client.get(f"/v1/leads/{lead_id}", headers=src.auth)
    assert status.status_code == 200
    assert status.json()["status"] == "received"
    assert status.json()["lead_id"] == str(lead_id)
    hidden = await ingest.client.get(f"/v1/leads/{lead_id}", headers=other.auth)
    assert hidden.status_code == 404
    assert hidden.json()["error"]["code"] == "lead_not_found"
    assert (await ingest.client.get(f"/v1/leads/{lead_id}")).status_code == 401


async def _chunks(data: bytes, size: int = 1024) -> AsyncIterator[bytes]:
    """A body sent chunked, without a Content-Length to check up front."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def test_every_rejected_request_gets_a_4xx_reason_and_writes_nothing(
    ingest: Service,
) -> None:
    (src,) = await configure(ingest)
    limit = ingest.rt.settings.max_body_bytes  # type: ignore[attr-defined]
    huge = json.dumps({**LEAD, "first_name": "x" * limit}).encode()
    json_headers = {**src.auth, "content-type": "application/json"}
    before = await ingest.counts()

    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("no key", {"json": LEAD}, 401, "invalid_api_key"),
        (
            "unknown key",
            {"json": LEAD, "headers": {"x-api-key": "lxsk_unknown"}},
            401,
            "invalid_api_key",
        ),
        (
            "malformed JSON",
            {"content": b'{"email": ', "headers": json_headers},
            400,
            "malformed_json",
        ),
        ("empty body", {"content": b"", "headers": json_headers}, 400, "malformed_json"),
        (
            "not UTF-8",
            {"content": b'{"state": "\xff"}', "headers": json_headers},
            400,
            "malformed_json",
        ),
        ("JSON array", {"json": [LEAD], "headers": src.auth}, 400, "malformed_json"),
        ("JSON string", {"json": "a lead", "headers": src.auth}, 400, "malformed_json"),
        ("oversized body", {"content": huge, "headers": json_headers}, 413, "payload_too_large"),
        (
            "oversized body, no length declared",
            {"content": _chunks(huge), "headers": json_headers},
            413,
            "payload_too_large",
        ),
    ]
    for name, request, status, code in cases:
        r = await ingest.client.post("/v1/leads", **request)
        assert r.status_code == status, f"{name}: {r.status_code} {r.text}"
        assert r.json()["error"]["code"] == code, f"{name}: {r.text}"

    # Invalid fields: every one is named with its code, in one answer.
    bad = {
        "email": "not-an-email",
        "phone": "123",
        "state": "XX",
        "zip": "9410",
        "loan_amount": "12.5",
        "homeowner": "maybe",
        "first_name": "y" * 41,
        "colour": "red",
    }
    r = await ingest.client.post("/v1/leads", json=bad, headers=src.auth)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_fields"
    assert {(e["field"], e["code"]) for e in error["errors"]} == {
        ("email", "invalid_email"),
        ("phone", "invalid_phone"),
        ("state", "invalid_state"),
        ("zip", "invalid_zip"),
        ("loan_amount", "wrong_type"),
        ("homeowner", "wrong_type"),
        ("first_name", "too_long"),
        ("colour", "unknown_field"),
    }
    assert all(e["detail"] for e in error["errors"])
    r = await ingest.client.post("/v1/leads", json={"zip": "94105", "email": " "}, headers=src.auth)
    assert r.status_code == 422, r.text
    assert [(e["field"], e["code"]) for e in r.json()["error"]["errors"]] == [
        ("email", "required"),
        ("phone", "required"),
        ("state", "required"),
    ]

    assert await ingest.counts() == before

    # Nothing reached Kafka either: once a later good lead is there, it is the only one.
    ok = await ingest.client.post("/v1/leads", json=LEAD, headers=src.auth)
    assert ok.status_code == 202, ok.text
    marker = uuid.UUID(ok.json()["lead_id"])
    received = await ingest.received_of(LEAD_RECEIVED, src.account_id)
    assert [e.payload.lead_id for e in received] == [marker]
    usage = await ingest.records(USAGE_INCREMENTED, key=src.account_id)
    assert [u.payload.subject_id for u in usage] == [marker]
    assert await ingest.counts() == {k: v + 1 for k, v in before.items()}


async def test_a_paused_source_or_campaign_is_refused_with_403_and_nothing_written(
    ingest: Service,
) -> None:
    (paused_source,) = await configure(ingest, source_status=ev.Status.PAUSED)
    (paused_campaign,) = await configure(ingest, campaign_status=ev.Status.PAUSED)
    (active,) = await configure(ingest)
    before = await ingest.counts()

    r = await ingest.client.post("/v1/leads", json=LEAD, headers=paused_source.auth)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "source_paused"
    r = await ingest.client.post("/v1/leads", json=LEAD, headers=paused_campaign.auth)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "campaign_paused"
    assert await ingest.counts() == before

    # Pausing a source that was taking leads takes effect from its next config event.
    assert (
        await ingest.client.post("/v1/leads", json=LEAD, headers=active.auth)
    ).status_code == 202
    await publish(
        ingest.bootstrap,
        ingest.prefix,
        [(source_configured(active, ev.Status.PAUSED), active.source_id)],
    )

    async def paused() -> bool:
        async with ingest.rt.db.begin() as conn:
            status = await conn.scalar(
                text("select status from sources where source_id = :s"), {"s": active.source_id}
            )
        return status == "paused"

    await eventually(paused, what="the source paused in ingest")
    r = await ingest.client.post("/v1/leads", json=LEAD, headers=active.auth)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "source_paused"
    assert await ingest.counts() == {k: v + 1 for k, v in before.items()}


async def test_a_lead_status_follows_its_outcome_and_says_why_without_naming_buyers(
    ingest: Service,
) -> None:
    (src,) = await configure(ingest)
    ids = []
    for _ in range(2):
        r = await ingest.client.post("/v1/leads", json=LEAD, headers=src.auth)
        assert r.status_code == 202, r.text
        ids.append(uuid.UUID(r.json()["lead_id"]))
    sold_id, unsold_id = ids
    ref = {"campaign_id": src.campaign_id, "source_id": src.source_id}
    env = {"account_id": src.account_id, "producer": "test"}
    buyers = [uuid.uuid4() for _ in range(3)]
    sold = ev.LeadSold.new(
        **env,
        correlation_id=sold_id,
        payload=ev.LeadSoldPayload(
            lead_id=sold_id,
            **ref,
            buyer_id=buyers[0],
            delivery_id=uuid.uuid4(),
            price=Decimal("31.40"),
            payout=Decimal("12.00"),
        ),
    )
    rejections = (
        ev.Rejection(
            code=ev.RejectionCode.FILTER, detail="filter 'CA only' of Acme", buyer_id=buyers[0]
        ),
        ev.Rejection(code=ev.RejectionCode.FILTER, detail="state in [NY]", buyer_id=buyers[1]),
        ev.Rejection(
            code=ev.RejectionCode.BUYER_REJECTED, detail="Acme said: no", buyer_id=buyers[2]
        ),
    )
    unsold = ev.LeadUnsold.new(
        **env,
        correlation_id=unsold_id,
        payload=ev.LeadUnsoldPayload(
            lead_id=unsold_id,
            **ref,
            reason=ev.ExhaustionReason.ALL_BUYERS_DECLINED,
            rejections=rejections,
        ),
    )
    await publish(ingest.bootstrap, ingest.prefix, [(sold, sold_id), (unsold, unsold_id)])

    async def status_of(lead_id: uuid.UUID, wanted: str) -> dict[str, Any] | None:
        r = await ingest.client.get(f"/v1/leads/{lead_id}", headers=src.auth)
        assert r.status_code == 200, r.text
        return r.json() if r.json()["status"] == wanted else None

    got = await eventually(lambda: status_of(sold_id, "sold"), what="lead sold")
    assert got["reason"] is None
    assert got["outcome_at"] is not None
    assert dt.datetime.fromisoformat(got["outcome_at"]) == sold.occurred_at
    assert (got["sales"], Decimal(got["payout"]), got["detail"]) == (
        1,
        Decimal("12.00"),
        "sold to 1 buyer",
    )
    got = await eventually(lambda: status_of(unsold_id, "unsold"), what="lead unsold")
    assert got["reason"] == "all_buyers_declined"
    assert dt.datetime.fromisoformat(got["outcome_at"]) == unsold.occurred_at
    assert got["detail"] == "no buyer accepted: 2 filtered out, 1 rejected it"
    assert [(r["code"], r["count"]) for r in got["rejections"]] == [
        ("filter", 2),
        ("buyer_rejected", 1),
    ]
    # A return claws the payout back.
    returned = ev.LeadReturned.new(
        **env,
        correlation_id=sold_id,
        payload=ev.LeadReturnedPayload(
            lead_id=sold_id,
            **ref,
            buyer_id=buyers[0],
            delivery_id=sold.payload.delivery_id,
            return_id=uuid.uuid4(),
            price=Decimal("31.40"),
            payout=Decimal("12.00"),
            reason_code=ev.ReturnReason.INVALID_CONTACT,
            returned_by=f"buyer:{buyers[0]}",
        ),
    )
    await publish(ingest.bootstrap, ingest.prefix, [(returned, sold_id)])

    async def clawed_back() -> dict[str, Any] | None:
        got = await status_of(sold_id, "sold")
        return got if got and got["returns"] == 1 else None

    got = await eventually(clawed_back, what="the return counted")
    assert (Decimal(got["payout"]), got["detail"]) == (
        Decimal("0.00"),
        "sold to 1 buyer; 1 sale returned",
    )
    # Which buyers, and their own words, are for the operator's trace only.
    raw = (await ingest.client.get(f"/v1/leads/{unsold_id}", headers=src.auth)).text
    for secret in [*(str(b) for b in buyers), "Acme", "CA only", "[NY]"]:
        assert secret not in raw
