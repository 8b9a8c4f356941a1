"""The configuration contract through admin's API, in-process against real Kafka and
PostgreSQL: campaigns v3, sources v2, buyers v2 with every field; secrets sealed before
they are stored or published, and never answered; clear 422s naming the field path."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiokafka import ConsumerRecord
from lx_admin.main import create_service
from lx_admin.settings import AdminSettings
from lx_devstack.infra import Infra
from lx_platform.runtime import Runtime
from lx_platform.secrets import ConfigKeys
from lx_platform.settings import PlatformSettings
from lx_schemas import decode_event
from lx_schemas import events as ev
from lx_schemas.topics import CONFIG_CHANGED
from sqlalchemy import text

from tests.support.dns import StubDns
from tests.support.kafka import read_to_end
from tests.support.services import OPERATOR, eventually, hosted, settings_for

DNS = StubDns({"buyer.example": ["93.184.216.34"], "ping.buyer.example": ["10.1.2.3"]})
FIELDS = [
    {"name": "email", "type": "email", "required": True, "pii": True},
    {"name": "state", "type": "us_state", "required": True},
    {"name": "dob", "type": "date"},
    {"name": "income", "type": "integer"},
]
AUTH_SECRET = "s3cr3t-bearer-" + uuid.uuid4().hex
PING_SECRET = "p1ng-key-" + uuid.uuid4().hex


@dataclass
class Admin:
    client: httpx.AsyncClient
    rt: Runtime
    bootstrap: str

    async def send(self, method: str, url: str, body: Any = None) -> httpx.Response:
        return await self.client.request(method, url, json=body, headers=OPERATOR)

    async def created(self, url: str, body: Any) -> dict[str, Any]:
        r = await self.send("POST", url, body)
        assert r.status_code == 201, r.text
        result: dict[str, Any] = r.json()
        return result

    async def records(self, key: str, n: int = 1) -> list[ConsumerRecord[Any, Any]]:
        topic = CONFIG_CHANGED.qualified(self.rt.settings.kafka.topic_prefix)

        async def read() -> list[ConsumerRecord[Any, Any]]:
            records = [r for r in await read_to_end(self.bootstrap, topic) if r.key == key.encode()]
            return records if len(records) >= n else []

        return await eventually(read, what=f"{n} config records of {key}")

    async def everything_stored(self) -> str:
        """Every row of every table of admin's database, as text."""
        async with self.rt.db.begin() as conn:
            tables = list(
                await conn.scalars(
                    text(
                        "select table_name from information_schema.tables"
                        " where table_schema = 'public' and table_type = 'BASE TABLE'"
                    )
                )
            )
            rows = [
                str(list(await conn.scalars(text(f"select t::text from {t} t")))) for t in tables
            ]
            outbox = [bytes(v) for v in await conn.scalars(text("select value from outbox"))]
        return "\n".join(rows) + b"".join(outbox).decode(errors="replace")


@pytest.fixture(scope="module")
async def admin(infra: Infra, isolation: str) -> AsyncIterator[Admin]:
    settings = settings_for(AdminSettings, infra, isolation, "admin", platform=PlatformSettings())
    async with hosted(create_service(settings, resolver=DNS)) as (client, rt):
        yield Admin(client, rt, infra.kafka_bootstrap)


@pytest.fixture(scope="module")
async def campaign(admin: Admin) -> dict[str, Any]:
    account = await admin.created("/v1/accounts", {"name": "Acme"})
    return await admin.created(
        f"/v1/accounts/{account['account_id']}/campaigns",
        {
            "name": "Auto",
            "vertical": "auto insurance",
            "fields": FIELDS,
            "distribution": {"mode": "highest_price", "max_sales": 3},
            "margin": {"fixed": "1.50", "percent": "10.00"},
            "ping_post": {"enabled": True, "auction_ms": 400, "ttl_s": 60},
        },
    )


def full_buyer() -> dict[str, Any]:
    return {
        "name": "Acme Insurance",
        "endpoint_url": "https://buyer.example/leads",
        "price": "40.00",
        "price_from_response": True,
        "priority": 3,
        "weight": 250,
        "timeout_ms": 1500,
        "timezone": "America/Chicago",
        "filters": [
            {"field": "state", "op": "in", "values": ["CA", "TX"], "label": "CA or TX"},
            {"field": "dob", "op": "age_between", "min": 25, "max": 70},
            {"field": "income", "op": "range", "min": 30000},
        ],
        "schedule": {"windows": [{"days": ["mon", "tue"], "start": "08:00", "end": "18:00"}]},
        "caps": [{"period": "day", "max_leads": 50}, {"period": "month", "max_usd": "5000.00"}],
        "dedupe_days": 30,
        "return_window_days": 5,
        "integration": {
            "format": "json",
            "mappings": [
                {"to": "contact.email", "source": "email"},
                {"to": "st", "source": "state"},
            ],
            "auth": {"kind": "bearer", "secret": AUTH_SECRET},
            "rules": [
                {
                    "probe": {"kind": "json_path", "path": "$.ok"},
                    "equals": ["true"],
                    "outcome": "accepted",
                }
            ],
        },
        "ping": {
            "url": "https://buyer.example/ping",
            "timeout_ms": 300,
            "integration": {
                "mappings": [{"to": "state", "source": "state"}],
                "auth": {"kind": "header", "header_name": "X-Api-Key", "secret": PING_SECRET},
            },
        },
        "breaker": {"failures": 3, "cool_down_s": 60},
    }


async def test_a_campaign_carries_distribution_margin_and_auctions_and_can_be_patched(
    admin: Admin, campaign: dict[str, Any]
) -> None:
    cid = campaign["campaign_id"]
    assert campaign["distribution"] == {"mode": "highest_price", "max_sales": 3}
    assert campaign["margin"] == {"fixed": "1.50", "percent": "10.00"}
    assert campaign["ping_post"] == {"enabled": True, "auction_ms": 400, "ttl_s": 60}
    r = await admin.send(
        "PATCH",
        f"/v1/campaigns/{cid}",
        {"status": "paused", "distribution": {"mode": "round_robin"}, "dedupe": None},
    )
    assert r.status_code == 200, r.text
    patched = r.json()
    assert patched == {
        **campaign,
        "status": "paused",
        "distribution": {"mode": "round_robin", "max_sales": 1},
        "dedupe": None,
    }
    records = await admin.records(cid, 2)
    events = [decode_event(r.value) for r in records]
    assert all(isinstance(e, ev.CampaignConfigured) and e.schema_version == 3 for e in events)
    assert events[-1].payload == ev.CampaignState(**patched)
    r = await admin.send("PATCH", f"/v1/campaigns/{cid}", {"status": "active"})
    assert r.json()["distribution"]["mode"] == "round_robin"  # only what is sent changes
    r = await admin.send(
        "PATCH", f"/v1/campaigns/{cid}", {"dedupe": {"fields": ["state"], "window_days": 3}}
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["errors"][0]["field"] == "dedupe.fields.0"
    r = await admin.send("PATCH", f"/v1/campaigns/{cid}", {"margin": {"percent": "101"}})
    assert r.status_code == 422 and r.json()["error"]["errors"][0]["field"] == "margin.percent"


async def test_a_source_payout_is_an_amount_fixed_or_percent_and_sources_can_be_patched(
    admin: Admin, campaign: dict[str, Any]
) -> None:
    url = f"/v1/campaigns/{campaign['campaign_id']}/sources"
    plain = await admin.created(url, {"name": "A", "payout": "10.00"})
    fixed = await admin.created(url, {"name": "B", "payout": {"fixed": "11.00"}})
    share = await admin.created(
        url,
        {
            "name": "C",
            "payout": {"percent": "40.00"},
            "controls": {
                "caps": [{"period": "day", "max_leads": 100}],
                "rate_per_s": 5,
                "burst": 10,
                "ip_allow": ["203.0.113.0/24"],
            },
        },
    )
    assert plain["payout"] == {"fixed": "10.00", "percent": None}
    assert fixed["payout"] == {"fixed": "11.00", "percent": None}
    assert share["payout"] == {"fixed": None, "percent": "40.00"}
    assert share["controls"]["ip_allow"] == ["203.0.113.0/24"]
    for bad, field in (
        ({"fixed": "1.00", "percent": "2.00"}, "payout"),
        ("-1", "payout"),
    ):
        r = await admin.send("POST", url, {"name": "D", "payout": bad})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["errors"][0]["field"].startswith(field)

    sid = share["source_id"]
    r = await admin.send("PATCH", f"/v1/sources/{sid}", {"status": "paused", "payout": "7.25"})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["payout"]) == (
        "paused",
        {"fixed": "7.25", "percent": None},
    )
    assert r.json()["controls"] == share["controls"]
    assert "api_key" not in r.json()
    (_, last) = await admin.records(sid, 2)
    event = decode_event(last.value)
    assert isinstance(event, ev.SourceConfigured) and event.schema_version == 2
    assert event.payload.payout.fixed is not None and str(event.payload.payout.fixed) == "7.25"
    r = await admin.send("PATCH", f"/v1/sources/{sid}", {"controls": {"caps": [{"period": "day"}]}})
    assert r.status_code == 422 and r.json()["error"]["errors"][0]["field"].startswith(
        "controls.caps.0"
    )
    r = await admin.send("PATCH", f"/v1/sources/{uuid.uuid4()}", {"status": "paused"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "source_not_found"


async def test_buyer_secrets_are_sealed_everywhere_and_never_answered(
    admin: Admin, campaign: dict[str, Any]
) -> None:
    created = await admin.created(f"/v1/campaigns/{campaign['campaign_id']}/buyers", full_buyer())
    bid = created["buyer_id"]
    signing = created["signing_secret_value"]
    assert signing.startswith("whsec_") and len(signing) > 40
    secrets = (AUTH_SECRET, PING_SECRET, signing)
    assert created["integration"]["auth"] == {
        "kind": "bearer",
        "username": None,
        "header_name": None,
        "secret": {"key_id": "devcfg1"},
    }
    assert created["ping"]["integration"]["auth"]["secret"] == {"key_id": "devcfg1"}
    assert created["signing_secret"] == {"key_id": "devcfg1"}
    assert AUTH_SECRET not in str(created) and PING_SECRET not in str(created)
    sent = full_buyer()
    for field in ("timezone", "weight", "dedupe_days", "return_window_days", "breaker"):
        assert created[field] == sent[field], field
    assert [f["field"] for f in created["filters"]] == ["state", "dob", "income"]
    assert created["filters"][0]["values"] == ["CA", "TX"]
    assert [(c["period"], c["max_leads"], c["max_usd"]) for c in created["caps"]] == [
        ("day", 50, None),
        ("month", None, "5000.00"),
    ]
    assert created["schedule"]["windows"][0]["days"] == ["mon", "tue"]

    for url in (f"/v1/buyers/{bid}", f"/v1/campaigns/{campaign['campaign_id']}/buyers"):
        r = await admin.send("GET", url)
        assert r.status_code == 200
        assert not [s for s in secrets if s in r.text], url
        assert "ciphertext" not in r.text
    stored = await admin.everything_stored()
    assert not [s for s in secrets if s in stored]

    (record,) = await admin.records(bid)
    assert not [s for s in secrets if s.encode() in record.value]
    event = decode_event(record.value)
    assert isinstance(event, ev.BuyerConfigured) and event.schema_version == 2
    keys = ConfigKeys.parse(admin.rt.settings.platform.config_keys.get_secret_value())
    state = event.payload
    assert state.integration.auth.secret and state.ping and state.ping.integration.auth.secret
    assert state.signing_secret is not None
    # Sealed, not lost: router and delivery open them with the config keys.
    assert keys.open(state.integration.auth.secret) == AUTH_SECRET
    assert keys.open(state.ping.integration.auth.secret) == PING_SECRET
    assert keys.open(state.signing_secret) == signing
    assert state.return_window_days == 5 and state.price_from_response

    # An integration changed without its secret keeps the one in force.
    change = {**full_buyer()["integration"], "auth": {"kind": "bearer"}, "format": "form"}
    r = await admin.send("PATCH", f"/v1/buyers/{bid}", {"integration": change})
    assert r.status_code == 200, r.text
    assert r.json()["integration"]["format"] == "form"
    r = await admin.send(
        "PATCH", f"/v1/buyers/{bid}", {"integration": {"auth": {"kind": "basic", "username": "u"}}}
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["errors"] == [
        {
            "field": "integration.auth.secret",
            "code": "missing_secret",
            "detail": "basic auth needs a secret",
        }
    ]

    # The signing secret rotates, shown once again.
    r = await admin.send("POST", f"/v1/buyers/{bid}/signing-secret")
    assert r.status_code == 200, r.text
    rotated = r.json()["signing_secret_value"]
    assert rotated.startswith("whsec_") and rotated != signing
    records = await admin.records(bid, 3)
    last = decode_event(records[-1].value)
    assert isinstance(last, ev.BuyerConfigured) and last.payload.signing_secret
    assert keys.open(last.payload.signing_secret) == rotated
    assert keys.open(last.payload.integration.auth.secret) == AUTH_SECRET  # kept
    assert last.payload.integration.format.value == "form"
    assert not [r for r in records if rotated.encode() in r.value]
    assert rotated not in await admin.everything_stored()

    r = await admin.send("PATCH", f"/v1/buyers/{bid}", {"status": "paused", "ping": None})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["ping"], r.json()["weight"]) == ("paused", None, 250)


async def test_the_first_api_versions_buyer_request_still_works(
    admin: Admin, campaign: dict[str, Any]
) -> None:
    url = f"/v1/campaigns/{campaign['campaign_id']}/buyers"
    plain = await admin.created(
        url, {"name": "Old", "endpoint_url": "https://buyer.example/", "price": "9.00"}
    )
    assert plain["integration"]["rules"] == [] and plain["return_window_days"] == 0
    legacy = await admin.created(
        url,
        {
            "name": "Legacy",
            "endpoint_url": "https://buyer.example/",
            "price": "9.00",
            "acceptance": {"field": "result", "accepted": ["ok", "sold"], "reason_field": "why"},
        },
    )
    (rule,) = legacy["integration"]["rules"]
    assert (rule["probe"], rule["equals"]) == (
        {"kind": "json_path", "path": '$["result"]', "pattern": None},
        ["ok", "sold"],
    )
    assert legacy["integration"]["captures"]["reason"]["path"] == '$["why"]'
    r = await admin.send(
        "POST",
        url,
        {
            "name": "Both",
            "endpoint_url": "https://buyer.example/",
            "price": "9.00",
            "acceptance": {},
            "integration": {},
        },
    )
    assert r.status_code == 422
    assert r.json()["error"]["errors"][0]["code"] == "acceptance_with_integration"


INVALID_BUYERS = [
    ({"filters": [{"field": "colour", "op": "exists"}]}, "filters.0.field", "unknown_filter_field"),
    ({"filters": [{"field": "state", "op": "regex", "pattern": "(["}]}, "filters.0", "value_error"),
    (
        {"filters": [{"field": "state", "op": "age_between", "min": 1}]},
        "filters.0.op",
        "filter_type_mismatch",
    ),
    ({"timezone": "Mars/Olympus"}, "timezone", "value_error"),
    ({"caps": [{"period": "day"}]}, "caps.0", "value_error"),
    ({"caps": [{"period": "fortnight", "max_leads": 1}]}, "caps.0.period", "enum"),
    (
        {"integration": {"mappings": [{"to": "x", "source": "nope"}]}},
        "integration.mappings.0.source",
        "unknown_mapping_source",
    ),
    (
        {
            "ping": {
                "url": "https://buyer.example/p",
                "integration": {"mappings": [{"to": "e", "source": "email"}]},
            }
        },
        "ping.integration.mappings.0.source",
        "pii_in_ping",
    ),
    (
        {
            "integration": {
                "auth": {"kind": "header", "header_name": "Authorization", "secret": "x"}
            }
        },
        "integration.auth",
        "value_error",
    ),
]


@pytest.mark.parametrize(("change", "field", "code"), INVALID_BUYERS)
async def test_an_invalid_buyer_gets_422_naming_the_field_path_and_nothing_changes(
    admin: Admin, campaign: dict[str, Any], change: dict[str, Any], field: str, code: str
) -> None:
    url = f"/v1/campaigns/{campaign['campaign_id']}/buyers"
    base = {"name": "B", "endpoint_url": "https://buyer.example/", "price": "5.00"}
    good = await admin.created(url, base)
    async with admin.rt.db.begin() as conn:
        before = await conn.scalar(text("select count(*) from buyers"))
    for method, target, body in (
        ("POST", url, {**base, **change}),
        ("PATCH", f"/v1/buyers/{good['buyer_id']}", change),
    ):
        r = await admin.send(method, target, body)
        assert r.status_code == 422, f"{method}: {r.text}"
        error = r.json()["error"]
        assert error["code"] == "invalid_request"
        assert (field, code) in {(e["field"], e["code"]) for e in error["errors"]}, error
    async with admin.rt.db.begin() as conn:
        assert await conn.scalar(text("select count(*) from buyers")) == before
    r = await admin.send("GET", f"/v1/buyers/{good['buyer_id']}")
    assert r.json() == {k: v for k, v in good.items() if k != "signing_secret_value"}


async def test_a_ping_url_refused_by_the_egress_policy_is_422(
    admin: Admin, campaign: dict[str, Any]
) -> None:
    body = {
        "name": "B",
        "endpoint_url": "https://buyer.example/",
        "price": "5.00",
        "ping": {"url": "https://ping.buyer.example/bid"},
    }
    r = await admin.send("POST", f"/v1/campaigns/{campaign['campaign_id']}/buyers", body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert (error["code"], error["field"], error["reason"]) == (
        "endpoint_not_allowed",
        "ping.url",
        "private",
    )
