"""The audit log (real Kafka and PostgreSQL): each configuration change with who, what,
before and after and no secret in clear; append-only; a hash chain that
``python -m lx_admin.audit verify`` walks, naming the row a tamperer changed."""

from __future__ import annotations

import subprocess
import sys
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
from lx_platform.settings import PlatformSettings
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.support.dns import StubDns
from tests.support.http import free_port
from tests.support.services import OPERATOR, hosted, settings_for

DNS = StubDns({"buyer.example": ["93.184.216.34"]})
FIELDS = [{"name": "state", "type": "us_state", "required": True}]
BUYER_SECRET = "header-secret-" + uuid.uuid4().hex


@dataclass
class Admin:
    client: httpx.AsyncClient
    rt: Runtime
    account_id: str
    other_account_id: str
    campaign_id: str
    buyer: dict[str, Any]

    async def call(
        self, method: str, url: str, body: Any = None, headers: dict[str, str] = OPERATOR
    ) -> httpx.Response:
        return await self.client.request(method, url, json=body, headers=headers)

    async def made(self, url: str, body: Any = None) -> dict[str, Any]:
        r = await self.call("POST", url, body)
        assert r.status_code == 201, r.text
        result: dict[str, Any] = r.json()
        return result

    def verify(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "lx_admin.audit",
                "verify",
                "--database-url",
                self.rt.settings.database_url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture(scope="module")
async def admin(infra: Infra, isolation: str) -> AsyncIterator[Admin]:
    platform = PlatformSettings(delivery_url=f"http://127.0.0.1:{free_port()}")
    settings = settings_for(AdminSettings, infra, isolation, "admin", platform=platform)
    async with hosted(create_service(settings, resolver=DNS)) as (client, rt):
        admin = Admin(client, rt, "", "", "", {})
        admin.account_id = (await admin.made("/v1/accounts", {"name": "Audited"}))["account_id"]
        admin.other_account_id = (await admin.made("/v1/accounts", {"name": "Other"}))["account_id"]
        admin.campaign_id = (
            await admin.made(
                f"/v1/accounts/{admin.account_id}/campaigns",
                {"name": "C", "vertical": "auto", "fields": FIELDS},
            )
        )["campaign_id"]
        admin.buyer = await admin.made(
            f"/v1/campaigns/{admin.campaign_id}/buyers",
            {
                "name": "B",
                "endpoint_url": "https://buyer.example/leads",
                "price": "10.00",
                "integration": {
                    "auth": {"kind": "header", "header_name": "X-Key", "secret": BUYER_SECRET}
                },
            },
        )
        await admin.made(
            f"/v1/accounts/{admin.other_account_id}/campaigns",
            {"name": "Theirs", "vertical": "auto", "fields": FIELDS},
        )
        yield admin


async def _entries(admin: Admin, headers: dict[str, str] = OPERATOR, **query: str) -> list[Any]:
    r = await admin.client.get("/v1/audit", params=query, headers=headers)
    assert r.status_code == 200, r.text
    entries: list[Any] = r.json()["entries"]
    return entries


async def test_a_change_is_recorded_with_who_what_before_and_after(admin: Admin) -> None:
    r = await admin.call("PATCH", f"/v1/campaigns/{admin.campaign_id}", {"status": "paused"})
    assert r.status_code == 200, r.text
    entries = await _entries(admin, account_id=admin.account_id)
    (change,) = [
        e
        for e in entries
        if e["action"] == "campaign.updated" and e["entity_id"] == admin.campaign_id
    ]
    assert change["actor"] == "operator_token:operator"
    assert change["entity_kind"] == "campaign"
    assert change["before"]["status"] == "active" and change["after"]["status"] == "paused"
    assert [e["action"] for e in entries[:3]] == [
        "account.created",
        "campaign.created",
        "buyer.created",
    ]


async def test_no_secret_is_recorded_in_clear(admin: Admin) -> None:
    r = await admin.call("POST", f"/v1/buyers/{admin.buyer['buyer_id']}/signing-secret")
    assert r.status_code == 200, r.text
    rotated = r.json()["signing_secret_value"]
    source = await admin.made(f"/v1/campaigns/{admin.campaign_id}/sources", {"name": "S"})
    async with admin.rt.db.begin() as conn:
        stored = str((await conn.execute(text("select * from audit_log"))).all())
    for secret in (
        BUYER_SECRET,
        admin.buyer["signing_secret_value"],
        rotated,
        source["api_key"],
        source["api_key_sha256"],
    ):
        assert secret not in stored
    entries = await _entries(admin, account_id=admin.account_id)
    (created,) = [e for e in entries if e["action"] == "buyer.created"]
    assert created["after"]["integration"]["auth"]["secret"] == {"key_id": "devcfg1"}


async def test_an_account_admin_reads_its_own_audit_only(admin: Admin) -> None:
    token = await admin.made(
        f"/v1/accounts/{admin.account_id}/api-tokens", {"name": "audit", "role": "admin"}
    )
    bearer = {"authorization": f"Bearer {token['token']}"}
    mine = await _entries(admin, bearer)
    assert mine and {e["account_id"] for e in mine} == {admin.account_id}
    r = await admin.client.get(
        "/v1/audit", params={"account_id": admin.other_account_id}, headers=bearer
    )
    assert r.status_code == 404
    everything = await _entries(admin, limit="500")
    assert {admin.account_id, admin.other_account_id} <= {e["account_id"] for e in everything}
    operator = await admin.made(
        f"/v1/accounts/{admin.account_id}/api-tokens", {"name": "op", "role": "operator"}
    )
    r = await admin.client.get(
        "/v1/audit", headers={"authorization": f"Bearer {operator['token']}"}
    )
    assert r.status_code == 403


async def test_the_log_refuses_updates_and_deletes(admin: Admin) -> None:
    for statement in (
        "update audit_log set actor = 'someone else'",
        "delete from audit_log",
        "truncate audit_log",
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            async with admin.rt.db.begin() as conn:
                await conn.execute(text(statement))
    assert (await _entries(admin))[0]["actor"] == "operator_token:operator"


async def test_the_chain_verifies_and_a_row_tampered_behind_the_apis_back_is_named(
    admin: Admin,
) -> None:
    """Last in this module: it leaves the chain broken."""
    done = admin.verify()
    assert done.returncode == 0, done.stderr
    assert "audit chain intact" in done.stdout

    async with admin.rt.db.begin() as conn:
        rows = (await conn.execute(text("select seq from audit_log order by seq"))).all()
        victim = rows[len(rows) // 2].seq
        # Someone with the table owner's rights: the trigger off, a change, the trigger on.
        await conn.execute(text("alter table audit_log disable trigger audit_log_append_only"))
        await conn.execute(
            text(
                "update audit_log set after = jsonb_set(coalesce(after, '{}'::jsonb),"
                " '{status}', '\"active\"') where seq = :s"
            ),
            {"s": victim},
        )
        await conn.execute(text("alter table audit_log enable trigger audit_log_append_only"))
    broken = admin.verify()
    assert broken.returncode == 1
    assert f"audit chain broken at row {victim}:" in broken.stderr
