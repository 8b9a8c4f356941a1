"""Admin's automation credentials (real Kafka and PostgreSQL): API tokens expire, and a
buyer token's requests are rate-limited per token."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from lx_admin.main import create_service
from lx_admin.settings import AdminSettings
from lx_devstack.infra import Infra
from lx_platform.runtime import Runtime
from sqlalchemy import text

from tests.support.dns import StubDns
from tests.support.services import OPERATOR, hosted, settings_for

DNS = StubDns({"buyer.example": ["93.184.216.34"]})
FIELDS = [{"name": "email", "type": "email", "required": True, "pii": True}]
BUYER_LIMIT = 3  # requests per minute per buyer token, in this module


@dataclass
class World:
    client: httpx.AsyncClient
    rt: Runtime
    account_id: str
    campaign_id: str

    async def made(self, url: str, body: Any = None) -> dict[str, Any]:
        r = await self.client.post(url, json=body, headers=OPERATOR)
        assert r.status_code == 201, r.text
        made: dict[str, Any] = r.json()
        return made


@pytest.fixture(scope="module")
async def world(infra: Infra, isolation: str) -> AsyncIterator[World]:
    settings = settings_for(
        AdminSettings, infra, isolation, "admin", buyer_rate_limit=f"{BUYER_LIMIT}/minute"
    )
    async with hosted(create_service(settings, resolver=DNS)) as (client, rt):
        world = World(client, rt, "", "")
        world.account_id = (await world.made("/v1/accounts", {"name": "Acme"}))["account_id"]
        world.campaign_id = (
            await world.made(
                f"/v1/accounts/{world.account_id}/campaigns",
                {"name": "C", "vertical": "solar", "fields": FIELDS},
            )
        )["campaign_id"]
        yield world


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# --- API tokens expire ----------------------------------------------------------------------


async def test_an_api_token_lives_90_days_unless_told_and_is_listed_with_its_expiry(
    world: World,
) -> None:
    created = await world.made(
        f"/v1/accounts/{world.account_id}/api-tokens", {"name": "ci", "role": "analyst"}
    )
    lifetime = dt.datetime.fromisoformat(created["expires_at"]) - dt.datetime.fromisoformat(
        created["created_at"]
    )
    assert dt.timedelta(days=89) < lifetime <= dt.timedelta(days=90, minutes=1)

    short = await world.made(
        f"/v1/accounts/{world.account_id}/api-tokens",
        {"name": "nightly", "role": "read_only", "expires_in_days": 7},
    )
    r = await world.client.get(f"/v1/accounts/{world.account_id}/api-tokens", headers=OPERATOR)
    listed = {t["token_id"]: t for t in r.json()}
    assert listed[short["token_id"]]["expires_at"] == short["expires_at"]
    assert "token" not in listed[short["token_id"]]
    week = dt.datetime.fromisoformat(short["expires_at"]) - dt.datetime.fromisoformat(
        short["created_at"]
    )
    assert dt.timedelta(days=6) < week <= dt.timedelta(days=7, minutes=1)


@pytest.mark.parametrize("days", [366, 0, 10_000])
async def test_an_api_token_may_not_live_beyond_a_year(world: World, days: int) -> None:
    r = await world.client.post(
        f"/v1/accounts/{world.account_id}/api-tokens",
        json={"role": "read_only", "expires_in_days": days},
        headers=OPERATOR,
    )
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request"
    assert [e["field"] for e in error["errors"]] == ["expires_in_days"]


async def test_an_expired_api_token_is_refused_as_expired(world: World) -> None:
    created = await world.made(
        f"/v1/accounts/{world.account_id}/api-tokens", {"name": "old", "role": "analyst"}
    )
    r = await world.client.get("/v1/auth/me", headers=bearer(created["token"]))
    assert r.status_code == 200 and r.json()["id"] == created["token_id"]

    async with world.rt.db.begin() as conn:  # its 90 days went by
        await conn.execute(
            text(
                "update api_tokens set expires_at = now() - interval '1 second' where token_id = :t"
            ),
            {"t": created["token_id"]},
        )
    r = await world.client.get("/v1/auth/me", headers=bearer(created["token"]))
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "token_expired"
    r = await world.client.get(
        f"/v1/campaigns/{world.campaign_id}", headers=bearer(created["token"])
    )
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_expired"
    # A token that never was one is no more than unauthorized.
    r = await world.client.get("/v1/auth/me", headers=bearer("lxat_" + uuid.uuid4().hex))
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


# --- buyer tokens are rate-limited ------------------------------------------------------------


async def _buyer_token(world: World, name: str) -> str:
    buyer = await world.made(
        f"/v1/campaigns/{world.campaign_id}/buyers",
        {"name": name, "endpoint_url": "https://buyer.example/leads", "price": "20.00"},
    )
    token: str = (await world.made(f"/v1/buyers/{buyer['buyer_id']}/tokens", {"name": name}))[
        "token"
    ]
    return token


async def test_a_buyer_token_past_its_rate_is_told_to_wait_while_another_buyer_passes(
    world: World,
) -> None:
    busy, quiet = await _buyer_token(world, "busy"), await _buyer_token(world, "quiet")
    answers = [
        (await world.client.get("/v1/buyer/deliveries", headers=bearer(busy))).status_code
        for _ in range(BUYER_LIMIT)
    ]
    assert answers == [200] * BUYER_LIMIT
    r = await world.client.get("/v1/buyer/deliveries", headers=bearer(busy))
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "rate_limited"
    assert int(r.headers["retry-after"]) > 0
    # Every buyer route counts against the same token.
    r = await world.client.post(
        f"/v1/buyer/leads/{uuid.uuid4()}/returns",
        json={"reason_code": "duplicate"},
        headers=bearer(busy),
    )
    assert r.status_code == 429
    # Another buyer's token has a count of its own.
    r = await world.client.get("/v1/buyer/deliveries", headers=bearer(quiet))
    assert r.status_code == 200
    # A wrong token is refused as such, never counted (nor told to wait).
    r = await world.client.get("/v1/buyer/deliveries", headers=bearer("lxbt_" + "x" * 40))
    assert r.status_code == 401
