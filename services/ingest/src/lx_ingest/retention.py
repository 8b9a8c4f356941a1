"""Deleting what ingest keeps only for a while: expired idempotency keys, duplicate-
index entries whose window has passed, cap counters of past periods and refused posts
older than ``rejected_retention_days``; and the PII of leads older than their
campaign's retention (crypto-shredded: their data keys destroyed, see
``lx_ingest.privacy``), with erasures whose first try failed.

Expiry is decided on read (an expired key or entry counts as absent), so how late the
pruner runs never changes an answer, only how much the tables hold. It deletes in
bounded batches, each its own short transaction, skipping rows a request has locked;
every replica may run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid

from lx_platform.db import Database
from lx_platform.logging import get_logger
from lx_platform.outbox import Outbox
from lx_schemas.envelope import derived_id, utcnow

from lx_ingest import privacy, store
from lx_ingest.settings import IngestSettings

log = get_logger(__name__)
# At most this many batches per table and round: a backlog drains over several rounds
# instead of holding the database for one long stretch.
MAX_BATCHES_PER_ROUND = 50


async def prune_once(
    db: Database, settings: IngestSettings, outbox: Outbox | None = None
) -> dict[str, int]:
    """One round over every table; returns how many rows each lost. ``outbox``: where
    the erasures performed announce their leads (``LeadsErased``)."""
    batch = settings.prune_batch_rows
    ttl = dt.timedelta(hours=settings.idempotency_ttl_hours)
    deleted = {
        "idempotency_keys": 0,
        "dedupe_index": 0,
        "source_cap_counters": 0,
        "rejected_leads": 0,
        "leads_shredded": 0,
        "erasures_performed": 0,
    }
    for _ in range(MAX_BATCHES_PER_ROUND):
        now = utcnow()
        async with db.begin() as conn:
            n = await store.prune_idempotency_keys(
                conn, created_before=now - ttl, now=now, limit=batch
            )
        deleted["idempotency_keys"] += n
        if n < batch:
            break
    for _ in range(MAX_BATCHES_PER_ROUND):
        async with db.begin() as conn:
            n = await store.prune_dedupe_index(conn, now=utcnow(), limit=batch)
        deleted["dedupe_index"] += n
        if n < batch:
            break
    # A month began at most 31 days ago: older counters count nothing any more.
    counters_before = utcnow() - dt.timedelta(days=32)
    rejected_before = utcnow() - dt.timedelta(days=settings.rejected_retention_days)
    for _ in range(MAX_BATCHES_PER_ROUND):
        async with db.begin() as conn:
            n = await store.prune_cap_counters(conn, before=counters_before, limit=batch)
        deleted["source_cap_counters"] += n
        if n < batch:
            break
    for _ in range(MAX_BATCHES_PER_ROUND):
        async with db.begin() as conn:
            n = await store.prune_rejected_leads(conn, before=rejected_before, limit=batch)
        deleted["rejected_leads"] += n
        if n < batch:
            break
    deleted["leads_shredded"] = await shred_past_retention(db, batch, outbox)
    for _ in range(MAX_BATCHES_PER_ROUND):
        n = await privacy.perform_pending_erasures(db, batch, outbox)
        deleted["erasures_performed"] += n
        if n < batch:
            break
    return deleted


async def shred_past_retention(db: Database, batch: int, outbox: Outbox | None = None) -> int:
    """Shred the leads whose campaign's retention has run out; each round's counts are
    recorded per campaign (``retention_runs``) and, with ``outbox``, the leads are
    announced (``LeadsErased``) in the same transaction, as an erasure's are."""
    run_at = utcnow()
    total = 0
    for _ in range(MAX_BATCHES_PER_ROUND):
        async with db.begin() as conn:
            due = await store.leads_past_retention(conn, now=run_at, limit=batch)
            now = utcnow()
            await store.shred_leads(conn, [lead for lead, _ in due], cause="retention", now=now)
            by_campaign: dict[uuid.UUID, list[uuid.UUID]] = {}
            for lead_id, campaign_id in due:
                by_campaign.setdefault(campaign_id, []).append(lead_id)
            await store.record_retention_run(
                conn, run_at, {c: len(ids) for c, ids in by_campaign.items()}
            )
            if outbox is not None:
                for campaign_id, ids in by_campaign.items():
                    account_id = await store.campaign_account(conn, campaign_id)
                    if account_id is None:  # cannot be: the campaign's retention is set
                        continue
                    # One id per batch of this run and campaign: a retried batch (its
                    # transaction rolled back) announces under the same ids.
                    run = derived_id("retention", run_at.isoformat(), campaign_id, ids[0])
                    await outbox.stage_many(conn, privacy.erased(run, account_id, ids, now))
        total += len(due)
        if len(due) < batch:
            break
    return total


class Pruner:
    """Runs ``prune_once`` every ``prune_interval_s`` while the service runs."""

    def __init__(
        self, db: Database, settings: IngestSettings, outbox: Outbox | None = None
    ) -> None:
        self.db = db
        self.settings = settings
        self.outbox = outbox
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ingest-pruner")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                deleted = await prune_once(self.db, self.settings, self.outbox)
                if any(deleted.values()):
                    log.info("expired_rows_pruned", **deleted)
            except Exception as exc:  # the database may be away: try again next round
                log.warning("prune_failed", error=repr(exc))
            await asyncio.sleep(self.settings.prune_interval_s)
