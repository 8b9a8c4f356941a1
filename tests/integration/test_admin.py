"""The admin API in-process against real Kafka and PostgreSQL.

Every configuration change is published on ``config.changed`` (through the outbox)
with the entity's full state, keyed by the entity's id; the lead trace is a read model
of the lead topics. No delivery service runs here: the trace says so in
``deliveries_error`` (the configured delivery URL is a free port nobody listens on).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import httpx
import pytest
from aiokafka import ConsumerRecord
from lx_admin.domain import redact_secrets
from lx_admin.main import create_service
from lx_admin.settings import AdminSettings
from lx_devstack.infra import Infra
from lx_platform.runtime import Runtime
from lx_platform.settings import PlatformSettings
from lx_schemas import Event, decode_event
from lx_schemas import events as ev
from lx_schemas.rules import Payout
from lx_schemas.topics import CONFIG_CHANGED
from sqlalchemy import text

from tests.support.dns import StubDns
from tests.support.http import free_port
from tests.support.kafka import publish, read_to_end
from tests.support.services import OPERATOR, eventually, hosted, settings_for

T = TypeVar("T")
FIELDS = [
    {"name": "email", "type": "email", "required": True, "pii": True},
    {"name": "state", "type": "us_state", "required": True},
    {"name": "purpose", "type": "enum", "options": ["purchase", "refinance"]},
]

# buyer.example stands for a buyer on the Internet; other names resolve as usual.
DNS = StubDns(
    {
        "buyer.example": ["93.184.216.34"],
        "metadata.buyer.example": ["169.254.169.254"],
        "split.buyer.example": ["93.184.216.34", "10.0.0.7"],
    }
)


# --- helpers --------------------------------------------------------------------------------


@dataclass
class Service:
    client: httpx.AsyncClient
    rt: Runtime
    bootstrap: str

    @property
    def prefix(self) -> str:
        return self.rt.settings.kafka.topic_prefix

    async def post(self, url: str, body: Any) -> httpx.Response:
        return await self.client.post(url, json=body, headers=OPERATOR)

    async def created(self, url: str, body: Any) -> dict[str, Any]:
        r = await self.post(url, body)
        assert r.status_code == 201, r.text
        result: dict[str, Any] = r.json()
        return result

    async def config_records(self, *keys: str) -> list[ConsumerRecord[Any, Any]]:
        """All of config.changed, once it holds a record for each of ``keys`` (the outbox
        relay publishes shortly after the API answers)."""
        wanted = {k.encode() for k in keys}

        async def read() -> list[ConsumerRecord[Any, Any]]:
            records = await read_to_end(self.bootstrap, CONFIG_CHANGED.qualified(self.prefix))
            return records if wanted <= {r.key for r in records} else []

        return await eventually(read, what=f"config.changed holding {keys}")

    async def counts(self) -> dict[str, int]:
        async with self.rt.db.begin() as conn:
            return {
                t: int(await conn.scalar(text(f"select count(*) from {t}")) or 0)
                for t in ("accounts", "campaigns", "sources", "buyers")
            }


@pytest.fixture(scope="module")
async def admin(infra: Infra, isolation: str) -> AsyncIterator[Service]:
    nobody = PlatformSettings(
        delivery_url=f"http://127.0.0.1:{free_port()}", internal_timeout_s=0.5
    )
    settings = settings_for(AdminSettings, infra, isolation, "admin", platform=nobody)
    async with hosted(create_service(settings, resolver=DNS)) as (client, rt):
        yield Service(client, rt, infra.kafka_bootstrap)


def keyed(records: list[ConsumerRecord[Any, Any]], key: str) -> list[Event]:
    return [decode_event(r.value) for r in records if r.key == key.encode()]


def shown(state: Any) -> Any:
    """A published state as the API shows it: sealed secrets by their key id only."""
    return redact_secrets(state.model_dump(mode="json"))


def view(created: dict[str, Any]) -> dict[str, Any]:
    """A created buyer as later answers show it: without the secret shown once."""
    return {k: v for k, v in created.items() if k != "signing_secret_value"}


async def make_campaign(admin: Service) -> tuple[dict[str, Any], dict[str, Any]]:
    account = await admin.created("/v1/accounts", {"name": "Acme Leads"})
    campaign = await admin.created(
        f"/v1/accounts/{account['account_id']}/campaigns",
        {"name": "Mortgage CA", "vertical": "mortgage", "fields": FIELDS},
    )
    return account, campaign


# --- tests ----------------------------------------------------------------------------------


async def test_each_created_entity_is_published_in_full_keyed_by_its_id(admin: Service) -> None:
    account, campaign = await make_campaign(admin)
    account_id, campaign_id = account["account_id"], campaign["campaign_id"]
    source = await admin.created(
        f"/v1/campaigns/{campaign_id}/sources", {"name": "Affiliate A", "payout": "12.50"}
    )
    buyer = await admin.created(
        f"/v1/campaigns/{campaign_id}/buyers",
        {
            "name": "Buyer One",
            "endpoint_url": "https://buyer.example/leads",
            "price": "35.10",
            "priority": 5,
            "timeout_ms": 800,
        },
    )
    source_state = {k: v for k, v in source.items() if k != "api_key"}
    assert account == {"account_id": account_id, "name": "Acme Leads", "status": "active"}
    assert campaign["account_id"] == account_id
    assert (source["account_id"], source["campaign_id"]) == (account_id, campaign_id)
    assert (buyer["account_id"], buyer["campaign_id"]) == (account_id, campaign_id)
    assert (source["payout"], buyer["price"], buyer["status"]) == (
        {"fixed": "12.50", "percent": None},
        "35.10",
        "active",
    )
    assert buyer["signing_secret_value"].startswith("whsec_")
    assert buyer["signing_secret"] == {"key_id": "devcfg1"}

    ids = {
        "account": account_id,
        "campaign": campaign_id,
        "source": source["source_id"],
        "buyer": buyer["buyer_id"],
    }
    records = await admin.config_records(*ids.values())
    expected = {
        "account": (ev.AccountConfigured, ev.AccountState(**account)),
        "campaign": (ev.CampaignConfigured, ev.CampaignState(**campaign)),
        "source": (ev.SourceConfigured, ev.SourceState(**source_state)),
    }
    for kind, (cls, state) in expected.items():
        events = keyed(records, ids[kind])
        assert len(events) == 1, f"{kind}: {events}"
        (event,) = events
        assert isinstance(event, cls)
        assert event.payload == state, kind  # the full state, as the API answered it
        assert str(event.account_id) == account_id
        assert str(event.correlation_id) == ids[kind]
        assert event.producer == "admin"
    (published,) = keyed(records, ids["buyer"])
    assert isinstance(published, ev.BuyerConfigured)
    assert shown(published.payload) == view(buyer)  # the full state, its secret sealed
    assert str(published.account_id) == account_id
    assert str(published.correlation_id) == ids["buyer"]
    headers = {
        k: v.decode() for r in records if r.key == ids["buyer"].encode() for k, v in r.headers
    }
    assert headers["lx-event-type"] == "BuyerConfigured"
    assert headers["lx-schema-version"] == "2"

    # The API reads back what it published.
    r = await admin.client.get(f"/v1/accounts/{account_id}", headers=OPERATOR)
    assert r.json() == account
    r = await admin.client.get(f"/v1/campaigns/{campaign_id}", headers=OPERATOR)
    assert r.json() == campaign
    r = await admin.client.get(f"/v1/campaigns/{campaign_id}/sources", headers=OPERATOR)
    assert r.json() == [source_state]
    r = await admin.client.get(f"/v1/campaigns/{campaign_id}/buyers", headers=OPERATOR)
    assert r.json() == [view(buyer)]
    assert await admin.rt.relay.backlog() == 0


async def test_a_source_api_key_is_shown_once_and_only_its_sha256_is_kept(admin: Service) -> None:
    _, campaign = await make_campaign(admin)
    url = f"/v1/campaigns/{campaign['campaign_id']}/sources"
    first = await admin.created(url, {"name": "Affiliate A"})
    second = await admin.created(url, {"name": "Affiliate B"})
    key = first["api_key"]
    assert key.startswith("lxsk_") and len(key) >= 40
    assert key != second["api_key"]
    assert first["api_key_sha256"] == hashlib.sha256(key.encode()).hexdigest()
    assert first["api_key_prefix"] == key[:11]
    assert first["payout"] == {"fixed": "0.00", "percent": None}

    records = await admin.config_records(first["source_id"])
    for record in records:
        assert key.encode() not in record.value
    (event,) = keyed(records, first["source_id"])
    assert isinstance(event, ev.SourceConfigured)
    assert event.payload.api_key_sha256 == first["api_key_sha256"]

    # Nowhere in admin's database: not in any table's rows, not in the outbox.
    async with admin.rt.db.begin() as conn:
        tables = list(
            await conn.scalars(
                text(
                    "select table_name from information_schema.tables"
                    " where table_schema = 'public' and table_type = 'BASE TABLE'"
                )
            )
        )
        assert "sources" in tables
        for table in tables:
            hits = await conn.scalar(
                text(f"select count(*) from {table} t where t::text like :k"), {"k": f"%{key}%"}
            )
            assert hits == 0, f"the API key is stored in {table}"
        stored = await conn.scalar(
            text("select state from sources where source_id = :s"), {"s": first["source_id"]}
        )
        outbox = list(await conn.scalars(text("select value from outbox")))
    assert "api_key" not in stored
    assert stored["api_key_sha256"] == first["api_key_sha256"]
    assert all(key.encode() not in bytes(v) for v in outbox)

    listed = await admin.client.get(url, headers=OPERATOR)
    assert key not in listed.text
    assert all("api_key" not in s for s in listed.json())


async def test_requests_without_the_operator_token_get_401_and_change_nothing(
    admin: Service,
) -> None:
    account, _ = await make_campaign(admin)
    before = await admin.counts()
    wrong = [
        {},
        {"authorization": "Bearer not-the-token"},
        {"authorization": "dev-operator-token"},
        {"authorization": "Basic dev-operator-token"},
    ]
    for headers in wrong:
        r = await admin.client.post("/v1/accounts", json={"name": "Intruder"}, headers=headers)
        assert r.status_code == 401, f"{headers}: {r.text}"
        assert r.json()["error"]["code"] == "unauthorized"
        r = await admin.client.get(f"/v1/accounts/{account['account_id']}", headers=headers)
        assert r.status_code == 401, f"{headers}: {r.text}"
        r = await admin.client.get(f"/v1/leads/{uuid.uuid4()}/trace", headers=headers)
        assert r.status_code == 401, f"{headers}: {r.text}"
    assert await admin.counts() == before
    marker = await admin.created("/v1/accounts", {"name": "Marker"})
    records = await admin.config_records(marker["account_id"])
    assert not [r for r in records if b"Intruder" in r.value]


async def test_an_unknown_parent_or_entity_is_404_and_nothing_is_published(admin: Service) -> None:
    nobody = str(uuid.uuid4())
    before = await admin.counts()
    buyer = {"name": "B", "endpoint_url": "https://buyer.example/", "price": "1.00"}
    cases = [
        (
            "post",
            f"/v1/accounts/{nobody}/campaigns",
            {"name": "M", "vertical": "mortgage", "fields": FIELDS},
            "account_not_found",
        ),
        ("post", f"/v1/campaigns/{nobody}/sources", {"name": "S"}, "campaign_not_found"),
        ("post", f"/v1/campaigns/{nobody}/buyers", buyer, "campaign_not_found"),
        ("patch", f"/v1/buyers/{nobody}", {"status": "paused"}, "buyer_not_found"),
        ("get", f"/v1/accounts/{nobody}", None, "account_not_found"),
        ("get", f"/v1/campaigns/{nobody}", None, "campaign_not_found"),
    ]
    for method, url, body, code in cases:
        r = await admin.client.request(method, url, json=body, headers=OPERATOR)
        assert r.status_code == 404, f"{method} {url}: {r.text}"
        assert r.json()["error"]["code"] == code

    assert await admin.counts() == before
    marker = await admin.created("/v1/accounts", {"name": "Marker"})
    records = await admin.config_records(marker["account_id"])
    assert not [r for r in records if nobody.encode() in r.value]


async def test_invalid_campaign_fields_get_422_naming_each_field(admin: Service) -> None:
    account = await admin.created("/v1/accounts", {"name": "Acme"})
    url = f"/v1/accounts/{account['account_id']}/campaigns"
    before = await admin.counts()

    r = await admin.post(url, {"name": "", "vertical": "mortgage", "fields": []})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert {(e["field"], e["code"]) for e in r.json()["error"]["errors"]} == {
        ("name", "string_too_short"),
        ("fields", "too_short"),
    }

    r = await admin.post(
        url,
        {
            "name": "M",
            "vertical": "mortgage",
            "fields": [
                {"name": "email", "type": "email"},
                {"name": "Bad Name", "type": "colour", "max_length": 0},
            ],
        },
    )
    assert r.status_code == 422, r.text
    assert {(e["field"], e["code"]) for e in r.json()["error"]["errors"]} == {
        ("fields.1.name", "string_pattern_mismatch"),
        ("fields.1.type", "enum"),
        ("fields.1.max_length", "greater_than_equal"),
    }

    r = await admin.post(
        url,
        {
            "name": "M",
            "vertical": "mortgage",
            "fields": [{"name": "email", "type": "email"}, {"name": "email", "type": "text"}],
        },
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "duplicate_field"
    assert "email" in r.json()["error"]["detail"]

    # An enum with no options could never accept a value: every lead would be refused.
    r = await admin.post(
        url,
        {
            "name": "M",
            "vertical": "mortgage",
            "fields": [{"name": "email", "type": "email"}, {"name": "purpose", "type": "enum"}],
        },
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert [(e["field"], e["code"]) for e in r.json()["error"]["errors"]] == [
        ("fields.1.options", "enum_without_options")
    ]

    assert await admin.counts() == before


async def test_a_campaign_duplicate_check_is_validated_and_published_as_campaign_v3(
    admin: Service,
) -> None:
    account = await admin.created("/v1/accounts", {"name": "Acme"})
    url = f"/v1/accounts/{account['account_id']}/campaigns"
    before = await admin.counts()

    def campaign(dedupe: Any) -> dict[str, Any]:
        return {"name": "M", "vertical": "mortgage", "fields": FIELDS, "dedupe": dedupe}

    # Only the campaign's own fields that identify a consumer can be matched on.
    r = await admin.post(url, campaign({"fields": ["email", "phone", "state"], "window_days": 30}))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert [(e["field"], e["code"]) for e in r.json()["error"]["errors"]] == [
        ("dedupe.fields.1", "unknown_dedupe_field"),
        ("dedupe.fields.2", "dedupe_field_not_matchable"),
    ]
    r = await admin.post(url, campaign({"fields": [], "window_days": 0, "scope": "buyer"}))
    assert r.status_code == 422, r.text
    assert {(e["field"], e["code"]) for e in r.json()["error"]["errors"]} == {
        ("dedupe.fields", "too_short"),
        ("dedupe.window_days", "greater_than_equal"),
        ("dedupe.scope", "enum"),
    }
    assert await admin.counts() == before

    rule = {"fields": ["email"], "window_days": 45, "scope": "account"}
    created = await admin.created(url, campaign(rule))
    assert created["dedupe"] == rule
    plain = await admin.created(url, {"name": "N", "vertical": "mortgage", "fields": FIELDS})
    assert plain["dedupe"] is None

    records = await admin.config_records(created["campaign_id"], plain["campaign_id"])
    for state in (created, plain):
        (record,) = [r for r in records if r.key == state["campaign_id"].encode()]
        assert {k: v.decode() for k, v in record.headers}["lx-schema-version"] == "3"
        event = decode_event(record.value)
        assert isinstance(event, ev.CampaignConfigured) and event.schema_version == 3
        assert event.payload == ev.CampaignState(**state)
    r = await admin.client.get(f"/v1/campaigns/{created['campaign_id']}", headers=OPERATOR)
    assert r.json() == created


async def test_pausing_a_buyer_publishes_its_new_full_state(admin: Service) -> None:
    _, campaign = await make_campaign(admin)
    buyer = await admin.created(
        f"/v1/campaigns/{campaign['campaign_id']}/buyers",
        {"name": "Buyer One", "endpoint_url": "https://buyer.example/leads", "price": "35.10"},
    )
    buyer_id = buyer["buyer_id"]

    r = await admin.client.patch(
        f"/v1/buyers/{buyer_id}", json={"status": "paused"}, headers=OPERATOR
    )
    assert r.status_code == 200, r.text
    paused = r.json()
    assert paused == {**view(buyer), "status": "paused"}

    async def both_states() -> list[Event]:
        records = await admin.config_records(buyer_id)
        events = keyed(records, buyer_id)
        return events if len(events) >= 2 else []

    events = await eventually(both_states, what="the paused state on config.changed")
    assert [shown(e.payload) for e in events] == [view(buyer), paused]
    r = await admin.client.get(f"/v1/campaigns/{campaign['campaign_id']}/buyers", headers=OPERATOR)
    assert r.json() == [paused]

    r = await admin.client.patch(
        f"/v1/buyers/{buyer_id}", json={"price": "1.234"}, headers=OPERATOR
    )
    assert r.status_code == 422, r.text
    assert [(e["field"], e["code"]) for e in r.json()["error"]["errors"]] == [
        ("price", "decimal_max_places")
    ]


# A sample of the egress corpus (tests/unit/test_egress.py has all of it): (url, reason).
REFUSED_ENDPOINTS = [
    ("http://127.0.0.1:8090/buyers/x/accept", "loopback"),
    ("http://2130706433/", "loopback"),
    ("http://0x7f.1/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://localhost/", "loopback"),
    ("http://LOCALHOST./", "loopback"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://10.0.0.1/", "private"),
    ("http://split.buyer.example/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "cloud_metadata"),
    ("http://metadata.buyer.example/", "cloud_metadata"),
    ("http://[fd00:ec2::254]/", "cloud_metadata"),
    ("http://100.64.0.1/", "shared_address_space"),
    ("http://user:pw@buyer.example/", "userinfo_not_allowed"),
    ("http://nowhere.invalid/", "unresolvable_host"),
]


async def test_buyer_endpoints_on_internal_addresses_get_422_and_change_nothing(
    admin: Service,
) -> None:
    _, campaign = await make_campaign(admin)
    buyers = f"/v1/campaigns/{campaign['campaign_id']}/buyers"
    buyer = await admin.created(
        buyers, {"name": "Good", "endpoint_url": "https://buyer.example/leads", "price": "9.00"}
    )
    before = await admin.counts()
    for url, reason in REFUSED_ENDPOINTS:
        created = await admin.post(buyers, {"name": "Bad", "endpoint_url": url, "price": "1.00"})
        patched = await admin.client.patch(
            f"/v1/buyers/{buyer['buyer_id']}", json={"endpoint_url": url}, headers=OPERATOR
        )
        for r in (created, patched):
            assert r.status_code == 422, f"{url}: {r.text}"
            error = r.json()["error"]
            assert (error["code"], error["field"], error["reason"]) == (
                "endpoint_not_allowed",
                "endpoint_url",
                reason,
            ), url
            assert error["detail"].startswith("endpoint_url: ")

    r = await admin.post(buyers, {"name": "Bad", "endpoint_url": "http://localhost/", "price": "1"})
    assert r.json()["error"]["detail"] == (
        "endpoint_url: localhost resolves to loopback address 127.0.0.1"
    )
    assert await admin.counts() == before
    r = await admin.client.get(buyers, headers=OPERATOR)
    assert r.json() == [view(buyer)]  # its endpoint unchanged
    marker = await admin.created("/v1/accounts", {"name": "Marker"})
    records = await admin.config_records(marker["account_id"])
    assert [shown(e.payload) for e in keyed(records, buyer["buyer_id"])] == [view(buyer)]

    # A public endpoint is still accepted on PATCH.
    r = await admin.client.patch(
        f"/v1/buyers/{buyer['buyer_id']}",
        json={"endpoint_url": "https://93.184.216.34/v2/leads"},
        headers=OPERATOR,
    )
    assert r.status_code == 200, r.text


async def test_the_lead_trace_lists_the_lead_events_in_event_time_order(admin: Service) -> None:
    account, campaign, source, buyer, lead = (uuid.uuid4() for _ in range(5))
    delivery = uuid.uuid4()
    t0 = dt.datetime(2026, 3, 14, 9, 26, 53, tzinfo=dt.UTC)
    ref = {"lead_id": lead, "campaign_id": campaign, "source_id": source}

    def env(seconds: float) -> dict[str, Any]:
        return {
            "account_id": account,
            "correlation_id": lead,
            "producer": "test",
            "occurred_at": t0 + dt.timedelta(seconds=seconds),
        }

    sealed = ev.SealedFields(
        key_id=lead, nonce="bm9uY2U=", ciphertext="c2VjcmV0", field_names=("email",)
    )
    content = ev.LeadContent(fields={"state": "CA"}, pii=sealed)
    received = ev.LeadReceived.new(**env(0), payload=ev.LeadReceivedPayload(**ref, lead=content))
    routed = ev.LeadRouted.new(
        **env(0.2),
        payload=ev.LeadRoutedPayload(
            **ref,
            buyer_id=buyer,
            attempt=1,
            delivery_id=delivery,
            price=Decimal("35.10"),
            payout=Payout(fixed=Decimal("12.00")),
            lead=content,
        ),
    )
    attempted = ev.DeliveryAttempted.new(
        **env(0.9),
        payload=ev.DeliveryAttemptedPayload(
            **ref,
            buyer_id=buyer,
            delivery_id=delivery,
            attempt=1,
            result=ev.DeliveryResult.ACCEPTED,
            http_status=200,
            latency_ms=412.5,
            price=Decimal("35.10"),
        ),
    )
    sold = ev.LeadSold.new(
        **env(1.0),
        payload=ev.LeadSoldPayload(
            **ref,
            buyer_id=buyer,
            delivery_id=delivery,
            price=Decimal("35.10"),
            payout=Decimal("12.00"),
        ),
    )

    async def trace() -> httpx.Response:
        return await admin.client.get(f"/v1/leads/{lead}/trace", headers=OPERATOR)

    (consumer,) = [c for c in admin.rt.consumers if c.group_id.endswith("admin-trace")]

    async def consumed(n: int) -> bool:
        return consumer.consumed >= n

    assert (await trace()).status_code == 404
    start = consumer.consumed
    await publish(admin.bootstrap, admin.prefix, [(received, lead)])
    await eventually(lambda: consumed(start + 1), what="lead.received consumed")
    r = await trace()
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "received"
    assert [e["type"] for e in r.json()["events"]] == ["LeadReceived"]

    # The rest arrives on other topics, the outcome first and the routing last, and one
    # event twice: the trace is still each event once, in the order they happened.
    await publish(
        admin.bootstrap,
        admin.prefix,
        [(sold, lead), (attempted, lead), (routed, lead), (sold, lead)],
    )
    await eventually(lambda: consumed(start + 5), what="every lead event consumed")
    r = await trace()
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["lead_id"] == str(lead)
    assert body["status"] == "sold"
    assert [e["type"] for e in body["events"]] == [
        "LeadReceived",
        "LeadRouted",
        "DeliveryAttempted",
        "LeadSold",
    ]
    assert [uuid.UUID(e["event_id"]) for e in body["events"]] == [
        received.event_id,
        routed.event_id,
        attempted.event_id,
        sold.event_id,
    ]
    assert [dt.datetime.fromisoformat(e["occurred_at"]) for e in body["events"]] == [
        received.occurred_at,
        routed.occurred_at,
        attempted.occurred_at,
        sold.occurred_at,
    ]
    topics = [e["topic"].removeprefix(admin.prefix) for e in body["events"]]
    assert topics == ["lead.received", "lead.routed", "delivery.outcome", "delivery.outcome"]
    first, second, third, fourth = (e["payload"] for e in body["events"])
    # The trace keeps clear fields and the names of the PII fields, never the ciphertext.
    assert "lead" not in first and "lead" not in second
    assert (first["fields"], first["pii_fields"]) == ({"state": "CA"}, ["email"])
    assert second["buyer_id"] == str(buyer) and second["price"] == "35.10"
    assert (third["result"], third["http_status"]) == ("accepted", 200)
    assert fourth["price"] == "35.10"
    assert "c2VjcmV0" not in (await trace()).text
    # No delivery service answers here: the trace says so instead of failing.
    assert body["deliveries"] == []
    assert body["deliveries_error"]

    r = await admin.client.get(f"/v1/leads/{uuid.uuid4()}/trace", headers=OPERATOR)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "lead_not_found"
