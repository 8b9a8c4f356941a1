"""Data subjects' access and erasure, and retention per campaign, in ingest against real
Kafka and PostgreSQL.

Each test makes its own subject (a unique e-mail and phone), so the tests share one
ingest without seeing each other's leads. Time passing is simulated by moving stored
times back.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from lx_devstack.infra import Infra
from lx_ingest import store
from lx_ingest.domain import SubjectKind
from lx_ingest.retention import prune_once
from lx_platform.crypto import open_fields
from lx_schemas import events as ev
from lx_schemas.envelope import utcnow
from lx_schemas.topics import LEAD_RECEIVED, PRIVACY_ERASURES
from sqlalchemy import text

from tests.support.ingest import LEAD, Service, Source, configure, running_ingest
from tests.support.services import OPERATOR, eventually

EMAIL_OR_PHONE = ev.DedupeRule(fields=("email", "phone"), window_days=30)
# Numbers 555-xxxx of a random block, one after another: unique within the module.
_PHONES = itertools.count(random.randrange(0, 9_000))


@pytest.fixture(scope="module")
async def ingest(infra: Infra, isolation: str) -> AsyncIterator[Service]:
    async with running_ingest(infra, isolation) as service:
        yield service


def a_subject() -> dict[str, str]:
    """A consumer of their own: a unique e-mail and a valid, unique US phone number."""
    tag = uuid.uuid4().hex[:10]
    return {
        **LEAD,
        "email": f"Subject.{tag}@Example.com",
        "phone": f"(415) 555-{next(_PHONES):04d}",
        "first_name": f"Name{tag}",
    }


async def post(svc: Service, src: Source, body: dict[str, Any]) -> httpx.Response:
    return await svc.client.post("/v1/leads", json=body, headers=src.auth)


async def accepted(svc: Service, src: Source, body: dict[str, Any]) -> uuid.UUID:
    r = await post(svc, src, body)
    assert r.status_code == 202, r.text
    return uuid.UUID(r.json()["lead_id"])


async def ask(svc: Service, kind: str, body: dict[str, Any]) -> httpx.Response:
    return await svc.client.post(f"/v1/privacy/{kind}", json=body, headers=OPERATOR)


async def held(svc: Service, table: str, column: str, ids: list[uuid.UUID]) -> int:
    return await svc.count(table, f"{column} = any(:ids)", ids=ids)


async def test_access_export_gives_back_the_subjects_leads_with_their_pii_and_refusals(
    ingest: Service,
) -> None:
    first, *_ = await configure(ingest, dedupe=EMAIL_OR_PHONE)
    (second,) = await configure(ingest, account_id=first.account_id)
    (elsewhere,) = await configure(ingest)  # another account
    subject, other = a_subject(), a_subject()
    mine = [await accepted(ingest, first, subject), await accepted(ingest, second, subject)]
    await accepted(ingest, first, other)
    await accepted(ingest, elsewhere, subject)
    # A duplicate of the subject refused after its fields were read: theirs as well.
    refused = await post(ingest, first, {**subject, "zip": "10001"})
    assert refused.status_code == 422, refused.text

    # The e-mail in another spelling finds the same subject.
    r = await ask(
        ingest, "access", {"account_id": str(first.account_id), "email": subject["email"].upper()}
    )

    assert r.status_code == 200, r.text
    export = r.json()
    assert [uuid.UUID(lead["lead_id"]) for lead in export["leads"]] == mine
    for lead in export["leads"]:
        assert lead["pii_state"] == "readable"
        assert lead["pii"] == {
            "email": subject["email"].lower(),
            "phone": f"+1{''.join(c for c in subject['phone'] if c.isdigit())}",
            "first_name": subject["first_name"],
        }
        assert lead["fields"]["state"] == "CA" and lead["status"] == "received"
    assert [x["lead_id"] for x in export["refusals"]] == [refused.json()["error"]["lead_id"]]
    assert export["refusals"][0]["code"] == "duplicate_lead"
    request = export["request"]
    assert (request["kind"], request["status"], request["leads"]) == ("access", "completed", 3)
    received = dt.datetime.fromisoformat(request["received_at"])
    assert dt.datetime.fromisoformat(request["due_at"]) - received == dt.timedelta(days=30)
    # By phone, in its own spelling: the same leads.
    by_phone = await ask(
        ingest, "access", {"account_id": str(first.account_id), "phone": subject["phone"]}
    )
    assert [uuid.UUID(x["lead_id"]) for x in by_phone.json()["leads"]] == mine


async def test_the_subject_index_holds_keyed_hashes_never_the_values(ingest: Service) -> None:
    (src,) = await configure(ingest)
    subject = a_subject()
    lead_id = await accepted(ingest, src, subject)
    async with ingest.rt.db.begin() as conn:
        rows = [
            dict(r._mapping)
            for r in await conn.execute(
                text("select * from subject_index where lead_id = :l"), {"l": lead_id}
            )
        ]
    assert sorted(r["kind"] for r in rows) == ["email", "phone"]
    digits = "".join(c for c in subject["phone"] if c.isdigit())
    for row in rows:
        stored = b" ".join(v if isinstance(v, bytes) else str(v).encode() for v in row.values())
        assert subject["email"].lower().encode() not in stored.lower()
        assert digits.encode() not in stored


async def test_erasure_shreds_the_subjects_keys_and_unlinks_them_leaving_others_whole(
    ingest: Service,
) -> None:
    src, *_ = await configure(ingest, dedupe=EMAIL_OR_PHONE)
    (second,) = await configure(ingest, account_id=src.account_id)
    subject, other = a_subject(), a_subject()
    theirs = [await accepted(ingest, src, subject), await accepted(ingest, second, subject)]
    kept = await accepted(ingest, src, other)
    assert await held(ingest, "lead_keys", "key_id", theirs) == 2
    assert await held(ingest, "dedupe_index", "lead_id", theirs) == 2

    r = await ask(ingest, "erasure", {"account_id": str(src.account_id), "phone": subject["phone"]})

    assert r.status_code == 202, r.text
    request = r.json()
    assert (request["kind"], request["status"]) == ("erasure", "completed")
    assert (request["leads"], request["keys_shredded"]) == (2, 2)
    received = dt.datetime.fromisoformat(request["received_at"])
    assert dt.datetime.fromisoformat(request["due_at"]) - received == dt.timedelta(days=30)
    # Nothing opens their PII, and nothing links back to them.
    for table, column in (
        ("lead_keys", "key_id"),
        ("subject_index", "lead_id"),
        ("dedupe_index", "lead_id"),
    ):
        assert await held(ingest, table, column, theirs) == 0, table
    assert await ingest.count("leads", "lead_id = any(:ids) and content is null", ids=theirs) == 2
    # The copies in Kafka are still there, sealed, and no key remains to open them.
    sealed = [
        e.payload.lead.pii
        for e in await ingest.received_of(LEAD_RECEIVED, src.account_id)
        if e.payload.lead_id in theirs
    ]
    assert len(sealed) == 2 and all(s is not None for s in sealed)
    async with ingest.rt.db.begin() as conn:
        vault: store.KeyVault = ingest.rt.extras["vault"]
        assert [await vault.get(conn, s.key_id) for s in sealed] == [None, None]
        other_key = await vault.get(conn, kept)
    # The other subject's lead is whole.
    (other_sealed,) = [
        e.payload.lead.pii
        for e in await ingest.received_of(LEAD_RECEIVED, src.account_id)
        if e.payload.lead_id == kept
    ]
    assert other_key is not None and open_fields(other_key, other_sealed)["email"]
    # The delivery log's way in (the vault's internal API) answers "shredded".
    internal = {"x-lx-internal-token": "dev-internal-token"}
    r = await ingest.client.get(f"/internal/v1/lead-keys/{theirs[0]}", headers=internal)
    assert r.status_code == 404
    # An access export finds nothing of them any more.
    export = await ask(
        ingest, "access", {"account_id": str(src.account_id), "email": subject["email"]}
    )
    assert (export.json()["leads"], export.json()["refusals"]) == ([], [])
    # The duplicate index forgot them: the same consumer may come again as a new lead.
    assert (await post(ingest, src, subject)).status_code == 202


async def test_requests_are_listed_with_their_deadlines_and_an_overdue_one_is_flagged_and_done(
    ingest: Service,
) -> None:
    (src,) = await configure(ingest)
    subject = a_subject()
    lead_id = await accepted(ingest, src, subject)
    # An erasure whose first try failed, received 31 days ago: overdue, still pending.
    request_id = uuid.uuid4()
    lookup = await ask(
        ingest, "access", {"account_id": str(src.account_id), "email": subject["email"]}
    )
    assert lookup.status_code == 200
    async with ingest.rt.db.begin() as conn:
        (value_hash,) = [
            bytes(r.value_hash)
            for r in await conn.execute(
                text("select value_hash from subject_index where lead_id = :l and kind = 'email'"),
                {"l": lead_id},
            )
        ]
        await store.insert_privacy_request(
            conn,
            request_id=request_id,
            kind="erasure",
            account_id=src.account_id,
            subject_kind=SubjectKind.EMAIL,
            value_hash=value_hash,
            received_at=utcnow() - dt.timedelta(days=31),
        )

    listed = await ingest.client.get(
        "/v1/privacy/requests",
        params={"account_id": str(src.account_id), "overdue": "true"},
        headers=OPERATOR,
    )
    assert listed.status_code == 200, listed.text
    (overdue,) = listed.json()["requests"]
    assert (overdue["request_id"], overdue["status"], overdue["overdue"]) == (
        str(request_id),
        "pending",
        True,
    )
    everything = await ingest.client.get(
        "/v1/privacy/requests", params={"account_id": str(src.account_id)}, headers=OPERATOR
    )
    assert [x["kind"] for x in everything.json()["requests"]] == ["erasure", "access"]

    # The pruner's round performs the pending erasure.
    done = await prune_once(ingest.rt.db, ingest.settings)

    assert done["erasures_performed"] >= 1
    r = await ingest.client.get(f"/v1/privacy/requests/{request_id}", headers=OPERATOR)
    assert (r.json()["status"], r.json()["overdue"], r.json()["keys_shredded"]) == (
        "completed",
        False,
        1,
    )
    assert await held(ingest, "lead_keys", "key_id", [lead_id]) == 0


async def test_retention_shreds_only_the_leads_older_than_their_campaigns_window(
    ingest: Service,
) -> None:
    (short,) = await configure(ingest)
    (forever,) = await configure(ingest, account_id=short.account_id)
    r = await ingest.client.put(
        f"/v1/privacy/campaigns/{short.campaign_id}/retention",
        json={"retention_days": 30},
        headers=OPERATOR,
    )
    assert r.status_code == 200, r.text
    assert r.json()["retention_days"] == 30
    old, young = (
        await accepted(ingest, short, a_subject()),
        await accepted(ingest, short, a_subject()),
    )
    old_elsewhere = await accepted(ingest, forever, a_subject())
    await ingest.execute(
        "update leads set received_at = received_at - interval '31 days' where lead_id = any(:ids)",
        ids=[old, old_elsewhere],
    )

    pruned = await prune_once(ingest.rt.db, ingest.settings, ingest.rt.outbox)

    assert pruned["leads_shredded"] >= 1
    assert await held(ingest, "lead_keys", "key_id", [old]) == 0
    assert await held(ingest, "subject_index", "lead_id", [old]) == 0
    assert await held(ingest, "lead_keys", "key_id", [young, old_elsewhere]) == 2
    assert await ingest.count("leads", "lead_id = :l and shred_cause = 'retention'", l=old) == 1
    view = await ingest.client.get(
        f"/v1/privacy/campaigns/{short.campaign_id}/retention", headers=OPERATOR
    )
    assert (view.json()["leads_shredded"], view.json()["retention_days"]) == (1, 30)
    # Announced like an erasure, so the router forgets their keyed hashes too.
    ingest.rt.relay.wake()
    announced = await eventually(
        lambda: ingest.events_of(PRIVACY_ERASURES, short.account_id), what="LeadsErased"
    )
    assert [e.payload.lead_ids for e in announced] == [(old,)]
    # A second round finds nothing more to shred in it.
    await prune_once(ingest.rt.db, ingest.settings)
    again = await ingest.client.get(
        f"/v1/privacy/campaigns/{short.campaign_id}/retention", headers=OPERATOR
    )
    assert again.json()["leads_shredded"] == 1


async def test_bad_privacy_requests_get_a_clear_4xx(ingest: Service) -> None:
    (src,) = await configure(ingest)
    account = str(src.account_id)
    cases = [
        ({"account_id": account}, 422, "subject_required"),
        (
            {"account_id": account, "email": "a@example.com", "phone": "4155550100"},
            422,
            "subject_required",
        ),
        ({"account_id": account, "email": "not-an-address"}, 422, "invalid_subject"),
        ({"account_id": account, "phone": "12"}, 422, "invalid_subject"),
        ({"account_id": "nope", "email": "a@example.com"}, 422, "invalid_request"),
        ({"account_id": account, "email": "a@example.com", "name": "x"}, 422, "invalid_request"),
    ]
    for body, status, code in cases:
        for kind in ("access", "erasure"):
            r = await ask(ingest, kind, body)
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), (body, r.text)
            assert "not-an-address" not in r.text  # the value is never echoed
    r = await ingest.client.post(
        "/v1/privacy/erasure", json={"account_id": account, "email": "a@example.com"}
    )
    assert r.status_code == 401
    r = await ingest.client.put(
        f"/v1/privacy/campaigns/{uuid.uuid4()}/retention",
        json={"retention_days": 30},
        headers=OPERATOR,
    )
    assert (r.status_code, r.json()["error"]["code"]) == (404, "campaign_not_found")
    for days in (0, 5000, "x"):
        r = await ingest.client.put(
            f"/v1/privacy/campaigns/{src.campaign_id}/retention",
            json={"retention_days": days},
            headers=OPERATOR,
        )
        assert r.status_code == 422, r.text
