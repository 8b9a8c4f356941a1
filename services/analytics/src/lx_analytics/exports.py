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
# One scheduler at a time across the service's replicas.
_LOCK = int.from_bytes(hashlib.sha256(b"lx-analytics-exports").digest()[:7], "big")


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
        """Run what is due at ``now``, then delete what has expired by then."""
        now = now or self.clock()
        async with self.db.begin() as conn:
            if not await conn.scalar(text("select pg_try_advisory_xact_lock(:k)"), {"k": _LOCK}):
                return Tick([], [])
            due = await conn.execute(
                text(
                    "select e.*, (select max(run_at) from export_runs r"
                    "  where r.export_id = e.export_id) as last_run"
                    " from exports e where e.status = 'active' order by e.export_id"
                )
            )
            ran = []
            for export in due.all():
                if is_due(export.last_run, export.every_hours, now):
                    ran.append(await self._run(conn, export, now))
            expired = await conn.execute(
                text(
                    "select run_id, export_id, file_name from export_runs"
                    " where deleted_at is null and expires_at <= :now order by expires_at"
                ),
                {"now": now},
            )
            deleted = []
            for run in expired.all():
                (self.folder / run.file_name).unlink(missing_ok=True)
                await conn.execute(
                    text("update export_runs set deleted_at = :now where run_id = :r"),
                    {"now": now, "r": run.run_id},
                )
                deleted.append(run.run_id)
                log.info("export_file_deleted", run_id=str(run.run_id), file=run.file_name)
        return Tick(ran, deleted)

    async def _run(self, conn: Any, export: Any, now: dt.datetime) -> uuid.UUID:
        query = ev.ExportQuery.model_validate(export.query)
        since, until = window_for(now, query.window_hours)
        rows = await reports.report(conn, query, since, until)
        body = reports.to_csv(rows)
        run_id = uuid.uuid4()
        name = f"{export.export_id}/{now.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}-{run_id.hex[:8]}.csv"
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside, then renamed: a reader never sees half a file.
        partial = path.with_suffix(".partial")
        partial.write_bytes(body)
        partial.replace(path)
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
        log.info("export_written", export_id=str(export.export_id), file=name, rows=len(rows))
        return run_id
