"""Scheduled CSV exports: run each active export when due, delete each file when its
retention window ends, and keep an audit row of every run.

The exports' configurations are projection state (``exports``, from ExportConfigured
events); the runs are not: ``export_runs`` records what this scheduler did at wall-clock
times, which no event holds, so projection rebuilds leave it alone. It also tells the
scheduler when an export last ran, so a rebuild does not re-run every export.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lx_platform.db import Database
from lx_platform.logging import get_logger
from lx_schemas import events as ev
from sqlalchemy import text

from lx_analytics import reports

log = get_logger(__name__)
Clock = Callable[[], dt.datetime]
# The advisory lock class of export runs (the second key is the export's id hashed):
# one replica runs a given export at a time.
_LOCK_CLASS = int.from_bytes(hashlib.sha256(b"lx-analytics-exports").digest()[:3], "big")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def window_for(now: dt.datetime, window_hours: int) -> tuple[dt.datetime, dt.datetime]:
    """The ``window_hours`` whole UTC hours before ``now``."""
    until = now.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    return until - dt.timedelta(hours=window_hours), until


def is_due(last_run: dt.datetime | None, every_hours: int, now: dt.datetime) -> bool:
    return last_run is None or now >= last_run + dt.timedelta(hours=every_hours)


@dataclass(frozen=True)
class Tick:
    ran: list[uuid.UUID]
    deleted: list[uuid.UUID]


class ExportScheduler:
    def __init__(
        self, db: Database, folder: Path, *, clock: Clock = utcnow, poll_s: float = 60.0
    ) -> None:
        self.db = db
        self.folder = folder
        self.clock = clock
        self.poll_s = poll_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception as exc:  # a bad tick is logged; the next one tries again
                log.error("export_tick_failed", error=repr(exc))
            await asyncio.sleep(self.poll_s)

    async def tick(self, now: dt.datetime | None = None) -> Tick:
        """Run what is due at ``now``, then delete what has expired by then.

        Each export runs in a transaction of its own under a lock of its own, so one
        that fails (a report too large, a full disk) is logged and skipped without
        holding back the others or the deletions, and two replicas never run one twice.
        """
        now = now or self.clock()
        async with self.db.begin() as conn:
            exports = list(
                await conn.scalars(
                    text("select export_id from exports where status = 'active' order by 1")
                )
            )
        ran = []
        for export_id in exports:
            try:
                run_id = await self._run_if_due(export_id, now)
            except Exception as exc:
                log.error("export_failed", export_id=str(export_id), error=repr(exc))
                continue
            if run_id is not None:
                ran.append(run_id)
        async with self.db.begin() as conn:
            expired = (
                await conn.execute(
                    text(
                        "select run_id, file_name from export_runs"
                        " where deleted_at is null and expires_at <= :now order by expires_at"
                    ),
                    {"now": now},
                )
            ).all()
        deleted = []
        for run in expired:
            async with self.db.begin() as conn:
                marked = await conn.scalar(
                    text(
                        "update export_runs set deleted_at = :now"
                        " where run_id = :r and deleted_at is null returning run_id"
                    ),
                    {"now": now, "r": run.run_id},
                )
                if marked is None:
                    continue  # another replica got there first
                # Inside the transaction: if it then fails to commit, the next tick marks
                # the row again and finds the file already gone (missing_ok).
                (self.folder / run.file_name).unlink(missing_ok=True)
            deleted.append(run.run_id)
            log.info("export_file_deleted", run_id=str(run.run_id), file=run.file_name)
        return Tick(ran, deleted)

    async def _run_if_due(self, export_id: uuid.UUID, now: dt.datetime) -> uuid.UUID | None:
        async with self.db.begin() as conn:
            locked = await conn.scalar(
                text("select pg_try_advisory_xact_lock(:k, hashtext(:e))"),
                {"k": _LOCK_CLASS, "e": str(export_id)},
            )
            if not locked:
                return None  # another replica is running it
            export = (
                await conn.execute(
                    text(
                        "select e.*, (select max(run_at) from export_runs r"
                        "  where r.export_id = e.export_id) as last_run"
                        " from exports e where e.export_id = :e and e.status = 'active'"
                    ),
                    {"e": export_id},
                )
            ).first()
            if export is None or not is_due(export.last_run, export.every_hours, now):
                return None
            return await self._run(conn, export, now)

    async def _run(self, conn: Any, export: Any, now: dt.datetime) -> uuid.UUID:
        query = ev.ExportQuery.model_validate(export.query)
        since, until = window_for(now, query.window_hours)
        # A tenant's export reports on its own campaigns only (null: staff's, all).
        rows = await reports.report(conn, query, since, until, export.account_id)
        body = reports.to_csv(rows)
        run_id = uuid.uuid4()
        name = f"{export.export_id}/{now.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}-{run_id.hex[:8]}.csv"
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside, then renamed: a reader never sees half a file.
        partial = path.with_suffix(".partial")
        partial.write_bytes(body)
        partial.replace(path)
        try:
            await self._record(conn, export, query, run_id, name, rows, body, since, until, now)
        except BaseException:
            path.unlink(missing_ok=True)  # no file without its audit row
            raise
        log.info("export_written", export_id=str(export.export_id), file=name, rows=len(rows))
        return run_id

    async def _record(
        self,
        conn: Any,
        export: Any,
        query: ev.ExportQuery,
        run_id: uuid.UUID,
        name: str,
        rows: list[Any],
        body: bytes,
        since: dt.datetime,
        until: dt.datetime,
        now: dt.datetime,
    ) -> None:
        await conn.execute(
            text(
                "insert into export_runs (run_id, export_id, name, configured_by, configured_at,"
                " query, period_from, period_to, run_at, file_name, rows, sha256, expires_at)"
                " values (:run_id, :export_id, :name, :by, :at, cast(:query as jsonb), :since,"
                " :until, :now, :file, :rows, :sha, :expires)"
            ),
            {
                "run_id": run_id,
                "export_id": export.export_id,
                "name": export.name,
                "by": export.configured_by,
                "at": export.configured_at,
                "query": query.model_dump_json(),
                "since": since,
                "until": until,
                "now": now,
                "file": name,
                "rows": len(rows),
                "sha": hashlib.sha256(body).hexdigest(),
                "expires": now + dt.timedelta(days=export.retention_days),
            },
        )
