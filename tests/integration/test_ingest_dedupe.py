"""Duplicate checks in ingest, against the real service, Kafka and PostgreSQL.

Campaigns get their rule the way production gives it: a ``CampaignConfigured`` (v2)
on ``config.changed``. Time passing is simulated by moving the index's stored times.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from lx_devstack.infra import Infra
from lx_ingest.retention import prune_once
from lx_schemas import Event
from lx_schemas import events as ev
from lx_schemas.topics import LEAD_RECEIVED, USAGE_INCREMENTED
from sqlalchemy import text

from tests.support.ingest import (
    FIELDS,
    LEAD,
    Service,
    Source,
    campaign_configured,
    configure,
    key_is_known,
    new_sources,
    running_ingest,
    source_configured,
)
from tests.support.kafka import publish
from tests.support.services import eventually

EMAIL_OR_PHONE = ev.DedupeRule(fields=("email", "phone"), window_days=30)
ACROSS_ACCOUNT = ev.DedupeRule(fields=("email",), window_days=30, scope=ev.DedupeScope.ACCOUNT)


@pytest.fixture(scope="module")
async def ingest(infra: Infra, isolation: str) -> AsyncIterator[Service]:
    # 20 requests at once each hold a connection while they wait on the same entry.
    async with running_ingest(infra, isolation, db_pool_size=16) as service:
        yield service


async def post(svc: Service, src: Source, body: Any = LEAD, **headers: str) -> httpx.Response:
    return await svc.client.post("/v1/leads", json=body, headers={**src.auth, **headers})


async def leads_of(svc: Service, src: Source) -> dict[str, int]:
    """The account's leads, counted in ingest's table and on both topics."""
    return {
        "leads": await svc.count("leads", "account_id = :a", a=src.account_id),
        "lead.received": len(await svc.received_of(LEAD_RECEIVED, src.account_id)),
        "usage.incremented": len(await svc.events_of(USAGE_INCREMENTED, src.account_id)),
    }


def counted(n: int) -> dict[str, int]:
    return {"leads": n, "lead.received": n, "usage.incremented": n}


def refused_as_duplicate(r: httpx.Response, field: str) -> None:
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "duplicate_lead"
    assert error["field"] == field
    # Nothing of the other lead: the refused lead's own id and the reason's code only.
    assert set(error) == {"code", "detail", "field", "reason", "lead_id"}
    assert error["reason"] == "duplicate"


async def age_index(svc: Service, scope_id: uuid.UUID, days: float) -> None:
    """As if the scope's entries had been written ``days`` earlier."""
    await svc.execute(
        "update dedupe_index set seen_at = seen_at - make_interval(secs => :s),"
        " expires_at = expires_at - make_interval(secs => :s) where scope_id = :id",
        s=days * 86400,
        id=scope_id,
    )


# --- tests ----------------------------------------------------------------------------------


async def test_a_lead_matching_an_earlier_one_on_any_rule_field_is_refused_naming_it(
    ingest: Service,
) -> None:
    (src,) = await configure(ingest, dedupe=EMAIL_OR_PHONE)
    first = await post(ingest, src)
    assert first.status_code == 202, first.text
    first_id = first.json()["lead_id"]

    # The same e-mail in another spelling, with another phone.
    same_email = await post(
        ingest, src, {**LEAD, "email": " ADA.lovelace@example.com", "phone": "212-555-0101"}
    )
    refused_as_duplicate(same_email, "email")
    assert first_id not in same_email.text
    # The same phone in another format, with another e-mail.
    same_phone = await post(
        ingest, src, {**LEAD, "email": "a@example.org", "phone": "+14155550132"}
    )
    refused_as_duplicate(same_phone, "phone")
    # Both match: the rule's first field is named.
    refused_as_duplicate(await post(ingest, src), "email")
    assert await leads_of(ingest, src) == counted(1)

    # Neither matches: a new consumer. A refused lead left nothing that could match.
    other = await post(ingest, src, {**LEAD, "email": "b@example.org", "phone": "212-555-0101"})
    assert other.status_code == 202, other.text
    assert await leads_of(ingest, src) == counted(2)


async def test_the_index_holds_keyed_hashes_and_never_the_values(ingest: Service) -> None:
    (src,) = await configure(ingest, dedupe=EMAIL_OR_PHONE)
    assert (await post(ingest, src)).status_code == 202
    async with ingest.rt.db.begin() as conn:
        rows = [
            dict(r._mapping)
            for r in await conn.execute(
                text("select * from dedupe_index where scope_id = :c"), {"c": src.campaign_id}
            )
        ]
    assert sorted(r["field"] for r in rows) == ["email", "phone"]
    # Any spelling of the e-mail or phone, in any column (short fragments such as "ada"
    # would match the hex of a random id).
    plain = [b"ada.lovelace", b"lovelace@example", b"4155550132", b"555-0132", b"(415)"]
    for row in rows:
        for value in row.values():
            stored = value if isinstance(value, bytes) else str(value).lower().encode()
            assert not [p for p in plain if p in stored], row
    assert all(len(r["value_hash"]) == 32 for r in rows)


async def test_of_20_identical_leads_at_the_same_instant_exactly_one_is_accepted(
    ingest: Service,
) -> None:
    (src,) = await configure(ingest, dedupe=EMAIL_OR_PHONE)

    answers = await asyncio.gather(
        *(post(ingest, src, **{"idempotency-key": str(uuid.uuid4())}) for _ in range(20))
    )

    statuses = sorted(r.status_code for r in answers)
    assert statuses == [202] + [422] * 19, [r.text for r in answers]
    for r in answers:
        if r.status_code == 422:
            refused_as_duplicate(r, "email")
    assert await leads_of(ingest, src) == counted(1)


async def test_a_lead_outside_the_window_passes_and_inside_it_does_not(ingest: Service) -> None:
    (src,) = await configure(ingest, dedupe=EMAIL_OR_PHONE)
    assert (await post(ingest, src)).status_code == 202

    await age_index(ingest, src.campaign_id, 29.9)
    refused_as_duplicate(await post(ingest, src), "email")
    await age_index(ingest, src.campaign_id, 0.2)  # 30.1 days: outside the 30-day window
    again = await post(ingest, src)
    assert again.status_code == 202, again.text
    # That lead starts a new window.
    refused_as_duplicate(await post(ingest, src), "email")
    assert await leads_of(ingest, src) == counted(2)


async def test_expired_entries_are_pruned_and_live_ones_kept(ingest: Service) -> None:
    (old,) = await configure(ingest, dedupe=EMAIL_OR_PHONE)
    (live,) = await configure(ingest, dedupe=EMAIL_OR_PHONE)
    assert (await post(ingest, old)).status_code == 202
    assert (await post(ingest, live)).status_code == 202
    await age_index(ingest, old.campaign_id, 31)

    deleted = await prune_once(ingest.rt.db, ingest.settings)

    assert deleted["dedupe_index"] >= 2
    assert await ingest.count("dedupe_index", "scope_id = :c", c=old.campaign_id) == 0
    assert await ingest.count("dedupe_index", "scope_id = :c", c=live.campaign_id) == 2


async def test_account_scope_spans_the_accounts_campaigns_and_no_other_account(
    ingest: Service,
) -> None:
    (first,) = await configure(ingest, dedupe=ACROSS_ACCOUNT)
    (sibling,) = await configure(ingest, dedupe=ACROSS_ACCOUNT, account_id=first.account_id)
    (own_index,) = await configure(
        ingest, dedupe=ev.DedupeRule(fields=("email",), window_days=30), account_id=first.account_id
    )
    (stranger,) = await configure(ingest, dedupe=ACROSS_ACCOUNT)

    assert (await post(ingest, first)).status_code == 202
    # Another campaign of the account that dedupes across the account: a duplicate.
    refused_as_duplicate(await post(ingest, sibling), "email")
    # A campaign of the account with a campaign-scoped rule keeps its own index.
    assert (await post(ingest, own_index)).status_code == 202
    refused_as_duplicate(await post(ingest, own_index), "email")
    # Another customer of the platform never sees this account's leads.
    assert (await post(ingest, stranger)).status_code == 202
    assert (await leads_of(ingest, first))["leads"] == 2


async def test_without_a_rule_repeats_pass_and_a_lead_that_failed_leaves_no_entry(
    ingest: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    (plain,) = await configure(ingest)
    for _ in range(2):
        assert (await post(ingest, plain)).status_code == 202

    (src,) = await configure(ingest, dedupe=EMAIL_OR_PHONE)

    async def kafka_down(event: Event, key: uuid.UUID | str) -> None:
        raise ConnectionError("kafka unreachable")

    with monkeypatch.context() as patch:
        patch.setattr(ingest.rt.publisher, "publish", kafka_down)
        assert (await post(ingest, src)).status_code == 503
    assert await ingest.count("dedupe_index", "scope_id = :c", c=src.campaign_id) == 0
    assert (await post(ingest, src)).status_code == 202  # the retry is no duplicate


async def test_a_rule_arrives_with_campaign_configured_v2_and_v1_campaigns_still_work(
    ingest: Service,
) -> None:
    # A v1 record, as admin published it before duplicate checks existed.
    account_id, campaign_id = uuid.uuid4(), uuid.uuid4()
    (src,) = new_sources(account_id, campaign_id, 1)
    v1 = ev.CampaignConfiguredV1.new(
        account_id=account_id,
        correlation_id=campaign_id,
        producer="admin",
        payload=ev.CampaignStateV1(
            campaign_id=campaign_id,
            account_id=account_id,
            name="Legacy",
            vertical="mortgage",
            fields=FIELDS,
        ),
    )
    await publish(
        ingest.bootstrap,
        ingest.prefix,
        [(v1, campaign_id), (source_configured(src), src.source_id)],
    )
    await key_is_known(ingest, src)
    for _ in range(2):
        assert (await post(ingest, src)).status_code == 202  # no rule: repeats pass

    # The operator adds a rule: the campaign's next state (v2) carries it.
    await publish(
        ingest.bootstrap,
        ingest.prefix,
        [(campaign_configured(account_id, campaign_id, dedupe=EMAIL_OR_PHONE), campaign_id)],
    )

    async def rule_known() -> bool:
        return (
            await ingest.count(
                "campaigns", "campaign_id = :c and dedupe is not null", c=campaign_id
            )
            == 1
        )

    await eventually(rule_known, what="ingest holding the campaign's rule")
    assert (await post(ingest, src, {**LEAD, "email": "new@example.org"})).status_code == 202
    refused_as_duplicate(await post(ingest, src, {**LEAD, "email": "new@example.org"}), "email")


async def test_once_the_lead_is_in_kafka_a_failed_usage_publish_neither_undoes_nor_loses_it(
    ingest: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    (src,) = await configure(ingest)
    real = ingest.rt.publisher.publish

    async def usage_fails(event: Event, key: uuid.UUID | str) -> None:
        if isinstance(event, ev.UsageIncremented):
            raise ConnectionError("kafka went away after the lead")
        await real(event, key)

    with monkeypatch.context() as patch:
        patch.setattr(ingest.rt.publisher, "publish", usage_fails)
        response = await post(ingest, src)
    assert response.status_code == 202, response.text
    lead_id = uuid.UUID(response.json()["lead_id"])
    # The data key survives (the lead's PII stays readable) and the usage arrives
    # through the outbox.
    assert await ingest.count("lead_keys", "key_id = :k", k=lead_id) == 1

    async def usage_relayed() -> bool:
        events = await ingest.events_of(USAGE_INCREMENTED, src.account_id)
        return any(e.payload.subject_id == lead_id for e in events)

    await eventually(usage_relayed, what="the deferred usage event on usage.incremented")
