"""KEK rotation (real Kafka and PostgreSQL): ``python -m lx_ingest.vault rewrap`` moves
every lead data key under the current KEK, in batches, resumably; afterwards the old KEK
can go and every lead's PII still opens."""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from lx_devstack.infra import Infra
from lx_ingest import vault
from lx_platform.crypto import KeyWrapper, open_fields
from lx_schemas import events as ev
from lx_schemas.topics import LEAD_RECEIVED
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.ingest import LEAD, Service, configure, running_ingest

OLD, NEW = os.urandom(32), os.urandom(32)
OLD_KEKS = f"old:{base64.b64encode(OLD).decode()}"
# The new KEK first (current), the old one still listed until the re-wrap is done.
ROTATED_KEKS = f"new:{base64.b64encode(NEW).decode()},{OLD_KEKS}"
LEADS = 7


@pytest.fixture(scope="module")
async def ingest(infra: Infra, isolation: str) -> AsyncIterator[Service]:
    async with running_ingest(infra, isolation, vault_keks=OLD_KEKS) as service:
        yield service


async def wrapped_keys(svc: Service) -> dict[uuid.UUID, str]:
    async with svc.rt.db.begin() as conn:
        rows = await conn.execute(text("select key_id, wrapped_key from lead_keys"))
        return {r.key_id: r.wrapped_key for r in rows}


async def post_leads(svc: Service) -> dict[uuid.UUID, str]:
    """Leads whose data keys the old KEK wraps; their e-mail addresses by lead id."""
    (src,) = await configure(svc)
    emails = {}
    for _ in range(LEADS):
        email = f"rotate.{uuid.uuid4().hex[:10]}@example.com"
        r = await svc.client.post("/v1/leads", json={**LEAD, "email": email}, headers=src.auth)
        assert r.status_code == 202, r.text
        emails[uuid.UUID(r.json()["lead_id"])] = email
    return emails


class Crash(Exception):
    pass


def crash_after_first_batch(done: vault.Rewrapped) -> None:
    raise Crash(f"stopped after batch {done.batches}")


async def test_rewrap_moves_every_key_under_the_new_kek_resumably_and_the_pii_still_opens(
    ingest: Service, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    emails = await post_leads(ingest)
    before = await wrapped_keys(ingest)
    assert len(before) >= LEADS
    assert all(w.startswith("old:") for w in before.values())

    rotated = KeyWrapper({"new": NEW, "old": OLD}, "new")
    engine = create_async_engine(ingest.settings.database_url, pool_size=1)
    try:
        # A run that dies after its first batch keeps that batch; the next run resumes.
        with pytest.raises(Crash):
            await vault.rewrap(engine, rotated, batch=3, progress=crash_after_first_batch)
        halfway = await wrapped_keys(ingest)
        assert sum(w.startswith("new:") for w in halfway.values()) == 3
    finally:
        await engine.dispose()

    monkeypatch.setenv("LX_INGEST_VAULT_KEKS", ROTATED_KEKS)
    url = ingest.settings.database_url
    assert (
        await asyncio.to_thread(vault.main, ["rewrap", "--database-url", url, "--batch", "2"]) == 0
    )
    report = capsys.readouterr().out
    assert f"re-wrapped {len(before) - 3} data keys under KEK 'new'" in report
    assert "0 not under the current KEK" in report
    # Idempotent: a second run finds nothing to do.
    assert await asyncio.to_thread(vault.main, ["rewrap", "--database-url", url]) == 0
    assert "re-wrapped 0 data keys" in capsys.readouterr().out

    after = await wrapped_keys(ingest)
    assert after.keys() == before.keys()
    assert all(w.startswith("new:") for w in after.values())
    dump = " ".join(after.values())
    assert "old:" not in dump

    # The old KEK removed: every lead's PII, as it travelled, opens with the new alone.
    only_new = KeyWrapper({"new": NEW}, "new")
    received: list[Any] = [
        e for e in await ingest.records(LEAD_RECEIVED) if isinstance(e, ev.LeadReceived)
    ]
    opened = {}
    for event in received:
        if event.payload.lead_id in emails:
            sealed = event.payload.lead.pii
            assert sealed is not None
            key = only_new.unwrap(after[sealed.key_id])
            opened[event.payload.lead_id] = open_fields(key, sealed)["email"]
    assert opened == emails


async def test_a_key_under_a_kek_no_longer_configured_is_reported_and_left(
    ingest: Service, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lost = base64.b64encode(os.urandom(32)).decode()
    stranded = uuid.uuid4()
    await ingest.execute(
        "insert into lead_keys (key_id, wrapped_key) values (:k, :w)",
        k=stranded,
        w=f"gone:{lost}",
    )
    monkeypatch.setenv("LX_INGEST_VAULT_KEKS", ROTATED_KEKS)
    assert (
        await asyncio.to_thread(
            vault.main, ["rewrap", "--database-url", ingest.settings.database_url]
        )
        == 1
    )
    out = capsys.readouterr().out
    assert "1 under a KEK not configured; 1 not under the current KEK" in out
    assert (await wrapped_keys(ingest))[stranded] == f"gone:{lost}"
    await ingest.execute("delete from lead_keys where key_id = :k", k=stranded)
