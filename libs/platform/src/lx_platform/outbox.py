"""Transactional outbox: stage events with the state change, relay them to Kafka.

The relay is woken in-process right after a commit (low latency) and also polls,
so rows left by a crash are sent on restart. One relay per database at a time
(an advisory lock) keeps per-key order; a crash between send and delete re-sends
rows with the same event id, which idempotent consumers ignore.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import uuid
from typing import Any

from lx_schemas.envelope import Event
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_platform.db import Database
from lx_platform.kafka import EventPublisher, encode_key
from lx_platform.logging import get_logger

log = get_logger(__name__)
_RELAY_LOCK = int.from_bytes(hashlib.sha256(b"lx-outbox-relay").digest()[:7], "big")

_INSERT = text(
    "insert into outbox (topic, key, event_id, headers, value)"
    " values (:topic, :key, :event_id, cast(:headers as jsonb), :value)"
)


class Outbox:
    def __init__(self, publisher: EventPublisher) -> None:
        self.publisher = publisher
        # Rows staged through this outbox so far (committed or not): a consumer wakes the
        # relay only when its batch staged any, rather than after every batch.
        self.staged = 0

    async def stage(self, conn: AsyncConnection, event: Event, key: uuid.UUID | str) -> None:
        await self.stage_many(conn, [(event, key)])

    async def stage_many(
        self, conn: AsyncConnection, items: list[tuple[Event, uuid.UUID | str]]
    ) -> None:
        if not items:
            return
        self.staged += len(items)
        await conn.execute(
            _INSERT,
            [
                {
                    "topic": self.publisher.topic(e),
                    "key": encode_key(k),
                    "event_id": e.event_id,
                    "headers": json.dumps(e.headers()),
                    "value": e.to_json(),
                }
                for e, k in items
            ],
        )

    async def stage_raw(
        self,
        conn: AsyncConnection,
        *,
        topic: str,
        key: bytes | None,
        headers: dict[str, str],
        value: bytes,
    ) -> None:
        """For records that are not platform events (dead letters keep their raw bytes)."""
        self.staged += 1
        await conn.execute(
            _INSERT,
            {
                "topic": topic,
                "key": key,
                "event_id": None,
                "headers": json.dumps(headers),
                "value": value,
            },
        )


class OutboxRelay:
    def __init__(
        self, db: Database, publisher: EventPublisher, *, batch: int = 1000, poll_s: float = 0.5
    ) -> None:
        self.db = db
        self.publisher = publisher
        self.batch = batch
        self.poll_s = poll_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def backlog(self, *, timeout_s: float | None = None) -> int:
        """Rows waiting to be sent; with ``timeout_s`` the count gives up (``TimeoutError``)
        rather than hold a scrape or a pool connection behind a struggling database."""
        async with asyncio.timeout(timeout_s), self.db.begin() as conn:
            if timeout_s is not None:
                await conn.execute(
                    text("select set_config('statement_timeout', :t, true)"),
                    {"t": f"{int(timeout_s * 1000)}ms"},
                )
            return int(await conn.scalar(text("select count(*) from outbox")) or 0)

    async def _run(self) -> None:
        while True:
            # Cleared before the batch is read, not after: a commit that wakes the relay
            # while it reads must not be forgotten (its rows would wait for the poll).
            self._wake.clear()
            try:
                sent = await self.relay_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Kafka or DB down: keep the rows, try again
                log.warning("outbox_relay_failed", error=repr(exc))
                await asyncio.sleep(1.0)
                continue
            if sent >= self.batch:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    async def relay_once(self) -> int:
        """Send one batch of staged rows; returns how many were sent."""
        async with self.db.begin() as conn:
            if not await conn.scalar(
                text("select pg_try_advisory_xact_lock(:k)"), {"k": _RELAY_LOCK}
            ):
                return 0
            rows = (
                await conn.execute(
                    text("select id, topic, key, headers, value from outbox order by id limit :n"),
                    {"n": self.batch},
                )
            ).all()
            if not rows:
                return 0
            records: list[tuple[str, bytes | None, dict[str, str], bytes]] = [
                (
                    r.topic,
                    bytes(r.key) if r.key is not None else None,
                    _headers(r.headers),
                    bytes(r.value),
                )
                for r in rows
            ]
            await self.publisher.publish_raw(records)
            await conn.execute(
                text("delete from outbox where id = any(:ids)"), {"ids": [r.id for r in rows]}
            )
        self.published += len(rows)
        return len(rows)


def _headers(raw: Any) -> dict[str, str]:
    data = raw if isinstance(raw, dict) else json.loads(raw)
    return {str(k): str(v) for k, v in data.items()}
