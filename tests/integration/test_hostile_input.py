"""Hostile request bodies and floods against ingest and admin in-process, with real Kafka
and PostgreSQL: each gets its 4xx with a code, and the service stays healthy after."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from lx_admin.main import create_service as create_admin
from lx_admin.settings import AdminSettings
from lx_devstack.infra import Infra
from lx_platform.settings import PlatformSettings

from tests.support.dns import StubDns
from tests.support.http import free_port
from tests.support.ingest import LEAD, Service, configure, running_ingest
from tests.support.services import OPERATOR, hosted, settings_for

MIB = 1 << 20
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
async def ingest(infra: Infra, isolation: str) -> AsyncIterator[Service]:
    async with running_ingest(infra, isolation) as service:
        yield service


def _admin_settings(infra: Infra, isolation: str, name: str, **platform: Any) -> AdminSettings:
    quiet = PlatformSettings(
        delivery_url=f"http://127.0.0.1:{free_port()}", internal_timeout_s=0.5, **platform
    )
    return settings_for(AdminSettings, infra, isolation, name, platform=quiet)


@pytest.fixture(scope="module")
async def admin(infra: Infra, isolation: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = _admin_settings(infra, isolation, "admin")
    app = create_admin(settings, resolver=StubDns({}, fallback=None))
    async with hosted(app) as (client, _):
        yield client


async def chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """A body sent chunked, without a Content-Length to check up front."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def error(r: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = r.json()["error"]
    return body


async def assert_healthy(client: httpx.AsyncClient) -> None:
    r = await client.get("/health/ready")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ready"


# --- ingest ---------------------------------------------------------------------------------


async def test_ingest_refuses_hostile_lead_bodies_with_a_4xx_and_keeps_taking_leads(
    ingest: Service,
) -> None:
    (src,) = await configure(ingest)
    headers = {**src.auth, **JSON}
    own_limit = ingest.settings.max_body_bytes
    platform_limit = ingest.settings.platform.max_body_bytes
    cases: list[tuple[str, Any, int, str]] = [
        # Past ingest's own limit: refused by ingest, which records the refusal.
        ("over ingest's limit", json.dumps({"first_name": "x" * own_limit}), 413, ""),
        # Past every service's limit: refused before anything reads it.
        ("2 MiB declared", b"{" + b" " * 2 * MIB + b"}", 413, ""),
        ("2 MiB streamed", chunks(b"[" + b"0," * MIB + b"0]"), 413, ""),
        # Python's json raises RecursionError (a 500) on this one if it gets to parse it.
        ("30,000 levels deep", '{"email": ' + nested(30_000) + "}", 400, ""),
        ("33 levels deep", '{"email": ' + nested(32) + "}", 400, ""),
        ("20,000 elements", json.dumps({"email": [0] * 20_000}), 413, "json_too_many_items"),
        ("a NUL", json.dumps({**LEAD, "first_name": "A\u0000"}), 400, "invalid_character"),
        ("a lone surrogate", json.dumps({**LEAD, "zip": "\ud800"}), 400, "invalid_character"),
    ]
    expected_code = {413: "payload_too_large", 400: "json_too_deep"}  # unless named
    for name, content, status, code in cases:
        r = await ingest.client.post("/v1/leads", content=content, headers=headers)
        assert r.status_code == status, f"{name}: {r.status_code} {r.text[:300]}"
        assert error(r)["code"] == (code or expected_code[status]), f"{name}: {r.text[:300]}"
    too_large = await ingest.client.post(
        "/v1/leads", content=b"{" + b" " * 2 * MIB + b"}", headers=headers
    )
    assert error(too_large)["limit"] == platform_limit
    assert f"{platform_limit} bytes" in error(too_large)["detail"]

    # A huge string within the size limits is the campaign's field rules' business.
    r = await ingest.client.post(
        "/v1/leads", json={**LEAD, "first_name": "y" * 60_000}, headers=src.auth
    )
    assert r.status_code == 422, r.text
    assert ("first_name", "too_long") in {(e["field"], e["code"]) for e in error(r)["errors"]}

    await assert_healthy(ingest.client)
    r = await ingest.client.post("/v1/leads", json=LEAD, headers=src.auth)
    assert r.status_code == 202, r.text


async def test_ingest_checks_the_key_before_it_reads_a_hostile_body(ingest: Service) -> None:
    r = await ingest.client.post("/v1/leads", content=nested(30_000), headers=JSON)
    assert r.status_code == 401
    assert error(r)["code"] == "invalid_api_key"


# --- admin ----------------------------------------------------------------------------------


async def test_admin_refuses_hostile_bodies_with_a_4xx_and_stays_healthy(
    admin: httpx.AsyncClient,
) -> None:
    headers = {**OPERATOR, **JSON}
    campaign = {"name": "c", "vertical": "v", "fields": [{"name": "email", "type": "email"}]}
    cases: list[tuple[str, str, Any, int, str]] = [
        ("/v1/accounts", "2 MiB declared", b'{"name": "' + b"a" * 2 * MIB + b'"}', 413, ""),
        ("/v1/accounts", "2 MiB streamed", chunks(b'{"name": "' + b"a" * 2 * MIB + b'"}'), 413, ""),
        ("/v1/accounts", "5,000 levels deep", '{"name": ' + nested(5_000) + "}", 400, ""),
        ("/v1/accounts", "a huge name", json.dumps({"name": "n" * 100_000}), 422, ""),
        (
            f"/v1/accounts/{uuid.uuid4()}/campaigns",
            "20,000 keys",
            json.dumps(campaign | {f"k{i}": i for i in range(20_000)}),
            413,
            "json_too_many_items",
        ),
        ("/v1/accounts", "a NUL", '{"name": "a\\u0000b"}', 400, "invalid_character"),
        ("/v1/accounts", "a lone surrogate", '{"name": "a\\ud800b"}', 400, "invalid_character"),
        (
            f"/v1/accounts/{uuid.uuid4()}/campaigns",
            "a huge field name",
            json.dumps(campaign | {"fields": [{"name": "e" * 50_000, "type": "email"}]}),
            422,
            "invalid_request",
        ),
    ]
    expected_code = {413: "payload_too_large", 400: "json_too_deep", 422: "invalid_request"}
    for url, name, content, status, code in cases:
        r = await admin.post(url, content=content, headers=headers)
        assert r.status_code == status, f"{name}: {r.status_code} {r.text[:300]}"
        assert error(r)["code"] == (code or expected_code[status]), f"{name}: {r.text[:300]}"

    await assert_healthy(admin)
    r = await admin.post("/v1/accounts", json={"name": "Acme"}, headers=OPERATOR)
    assert r.status_code == 201, r.text


async def test_an_operator_token_over_its_rate_gets_429_with_retry_after(
    infra: Infra, isolation: str
) -> None:
    settings = _admin_settings(infra, isolation, "admin_limited", operator_rate_limit="5/minute")
    app = create_admin(settings, resolver=StubDns({}, fallback=None))
    async with hosted(app) as (client, _):
        url = f"/v1/accounts/{uuid.uuid4()}"
        for _ in range(5):
            assert (await client.get(url, headers=OPERATOR)).status_code == 404
        r = await client.get(url, headers=OPERATOR)
        assert r.status_code == 429, r.text
        assert error(r)["code"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 60
        # A wrong token is refused as such; probes are not rate limited.
        wrong = await client.get(url, headers={"authorization": "Bearer wrong"})
        assert wrong.status_code == 401
        await assert_healthy(client)
        # The limit is the token's, not the service's: another operator API client with
        # another token would have its own count (checked in unit tests); this one waits.
        again = await client.post("/v1/accounts", json={"name": "x"}, headers=OPERATOR)
        assert again.status_code == 429
