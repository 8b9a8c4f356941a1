"""Privacy requests reach admin's hash-chained audit log with their actor, and erasures
are announced for the services that hold other links to the erased leads (real Kafka and
PostgreSQL; ingest and admin in one module, one topic prefix)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from lx_admin import audit
from lx_admin.main import create_service as create_admin
from lx_admin.settings import AdminSettings
from lx_devstack.infra import Infra
from lx_platform.runtime import Runtime
from lx_schemas import events as ev
from lx_schemas.topics import AUDIT_RECORDED, PRIVACY_ERASURES
from sqlalchemy import text

from tests.support.ingest import LEAD, Service, configure, running_ingest
from tests.support.kafka import publish
from tests.support.services import OPERATOR, eventually, hosted, settings_for
from tests.support.settle import wait_consumed

OPERATOR_ACTOR = "operator_token:operator"


@dataclass
class Stack:
    ingest: Service
    admin: httpx.AsyncClient
    admin_rt: Runtime
    admin_db: str

    async def audit_of(self, account_id: uuid.UUID) -> list[dict[str, Any]]:
        r = await self.admin.get(
            "/v1/audit", params={"account_id": str(account_id)}, headers=OPERATOR
        )
        assert r.status_code == 200, r.text
        entries: list[dict[str, Any]] = r.json()["entries"]
        return entries

    async def audited(self, account_id: uuid.UUID, n: int) -> list[dict[str, Any]]:
        """The account's entries once there are ``n`` of them."""

        async def enough() -> list[dict[str, Any]]:
            entries = await self.audit_of(account_id)
            return entries if len(entries) >= n else []

        return await eventually(enough, what=f"{n} audit entries of {account_id}")


@pytest.fixture(scope="module")
async def stack(infra: Infra, isolation: str) -> AsyncIterator[Stack]:
    async with running_ingest(infra, isolation) as ingest:
        settings = settings_for(AdminSettings, infra, isolation, "admin")
        async with hosted(create_admin(settings)) as (admin, admin_rt):
            yield Stack(ingest, admin, admin_rt, settings.database_url)


def a_subject() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {**LEAD, "email": f"canary.{tag}@example.com", "first_name": f"Canary{tag}"}


async def accepted(stack: Stack, src: Any, body: dict[str, Any]) -> uuid.UUID:
    r = await stack.ingest.client.post("/v1/leads", json=body, headers=src.auth)
    assert r.status_code == 202, r.text
    return uuid.UUID(r.json()["lead_id"])


async def ask(stack: Stack, kind: str, account_id: uuid.UUID, email: str) -> dict[str, Any]:
    r = await stack.ingest.client.post(
        f"/v1/privacy/{kind}",
        json={"account_id": str(account_id), "email": email},
        headers=OPERATOR,
    )
    assert r.status_code in (200, 202), r.text
    view: dict[str, Any] = r.json()
    return view


async def test_an_access_export_and_an_erasure_are_audited_with_their_actor_and_the_chain_holds(
    stack: Stack,
) -> None:
    (src,) = await configure(stack.ingest)
    subject = a_subject()
    await accepted(stack, src, subject)

    export = await ask(stack, "access", src.account_id, subject["email"])
    erased = await ask(stack, "erasure", src.account_id, subject["email"])
    access_id, erasure_id = export["request"]["request_id"], erased["request_id"]

    entries = await stack.audited(src.account_id, 2)
    assert [(e["action"], e["entity_kind"], e["entity_id"], e["actor"]) for e in entries] == [
        ("privacy.access_requested", "privacy_request", access_id, OPERATOR_ACTOR),
        ("privacy.erasure_requested", "privacy_request", erasure_id, OPERATOR_ACTOR),
    ]
    assert [e["after"]["request_id"] for e in entries] == [access_id, erasure_id]
    assert all(e["after"]["subject_kind"] == "email" for e in entries)
    # The subject is named by the request, never by their e-mail address.
    assert subject["email"] not in json.dumps(entries).lower()

    count, broken = await audit.verify(stack.admin_db)
    assert broken is None and count >= 2


async def test_an_audit_event_delivered_twice_is_appended_once(stack: Stack) -> None:
    (src,) = await configure(stack.ingest)
    await ask(stack, "access", src.account_id, a_subject()["email"])
    (entry,) = await stack.audited(src.account_id, 1)
    (event,) = [
        e
        for e in await stack.ingest.events_of(AUDIT_RECORDED, src.account_id)
        if isinstance(e, ev.AuditRecorded)
    ]
    assert entry["audit_id"] == str(event.event_id)

    # Published again (a producer's retry), and a fresh consumer group reading it all
    # again is what the entry's id guards against: the same event id is one entry.
    positions = await publish(
        stack.ingest.bootstrap, stack.ingest.prefix, [(event, src.account_id)]
    )
    await wait_consumed(stack.ingest.bootstrap, f"{stack.ingest.prefix}admin-audit", positions)
    async with stack.admin_rt.db.begin() as conn:
        appended = await audit.append(
            conn,
            event.payload.actor,
            event.payload.action,
            account_id=event.account_id,
            entity_kind=event.payload.entity_kind,
            entity_id=event.payload.entity_id,
            after=dict(event.payload.detail),
            audit_id=event.event_id,
            at=event.occurred_at,
        )
    assert appended is False
    assert len(await stack.audit_of(src.account_id)) == 1
    _, broken = await audit.verify(stack.admin_db)
    assert broken is None


async def test_a_retention_change_is_audited_with_the_campaign_and_its_days(
    stack: Stack,
) -> None:
    (src,) = await configure(stack.ingest)
    r = await stack.ingest.client.put(
        f"/v1/privacy/campaigns/{src.campaign_id}/retention",
        json={"retention_days": 45},
        headers=OPERATOR,
    )
    assert r.status_code == 200, r.text
    (entry,) = await stack.audited(src.account_id, 1)
    assert (entry["action"], entry["entity_kind"], entry["entity_id"], entry["actor"]) == (
        "privacy.retention_set",
        "campaign",
        str(src.campaign_id),
        OPERATOR_ACTOR,
    )
    assert entry["after"] == {"retention_days": 45}


async def test_an_erasure_announces_the_subjects_leads_and_no_one_elses(stack: Stack) -> None:
    (src,) = await configure(stack.ingest)
    subject, other = a_subject(), a_subject()
    mine = {await accepted(stack, src, subject), await accepted(stack, src, subject)}
    theirs = await accepted(stack, src, other)

    erased = await ask(stack, "erasure", src.account_id, subject["email"])

    async def announced() -> list[ev.LeadsErased]:
        events = await stack.ingest.events_of(PRIVACY_ERASURES, src.account_id)
        return [e for e in events if isinstance(e, ev.LeadsErased)]

    (event,) = await eventually(announced, what="LeadsErased")
    assert str(event.payload.request_id) == erased["request_id"]
    assert set(event.payload.lead_ids) == mine and theirs not in event.payload.lead_ids
    assert subject["email"] not in event.model_dump_json().lower()
    async with stack.ingest.rt.db.begin() as conn:
        keys = await conn.scalar(
            text("select count(*) from lead_keys where key_id = any(:ids)"), {"ids": list(mine)}
        )
    assert keys == 0
