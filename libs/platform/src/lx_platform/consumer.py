"""The idempotent consumer every service uses.

A batch from Kafka is handled in ONE database transaction together with the record
of which event ids this consumer has processed; only after that commit is the Kafka
offset committed (FastStream ``AckPolicy.MANUAL``). So a crash anywhere redelivers,
and a redelivered or re-published event changes nothing.

Failures are sorted: transient ones (database or broker unreachable) are retried with
jittered backoff and nothing is committed; anything else is isolated to the event that
causes it, which goes to ``<topic>.dlq`` with its origin, never into a tight loop.
"""

from __future__ import annotations

import json
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy.exc
from aiokafka import ConsumerRecord
from aiokafka.errors import IllegalStateError, KafkaError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.kafka.subscriber.usecase import BatchSubscriber
from lx_schemas.envelope import Event, UnknownEventError, decode_event, utcnow
from lx_schemas.topics import TopicSpec
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from lx_platform.db import Database, pg_array, pg_text_array
from lx_platform.kafka import dead_letter_topic
from lx_platform.logging import get_logger
from lx_platform.metrics import Metrics
from lx_platform.outbox import Outbox, OutboxRelay

log = get_logger(__name__)


@dataclass(frozen=True)
class Consumed:
    """An event with where it came from."""

    event: Event
    topic: str
    partition: int
    offset: int


BatchHandler = Callable[[AsyncConnection, Sequence[Consumed]], Awaitable[None]]


def is_transient(exc: BaseException) -> bool:
    """Infrastructure trouble that a retry can cure, as opposed to a poison message."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig or exc
    return isinstance(
        exc,
        OSError
        | TimeoutError
        | KafkaError
        | sqlalchemy.exc.OperationalError
        | sqlalchemy.exc.InterfaceError
        | sqlalchemy.exc.TimeoutError
        | psycopg.OperationalError
        | psycopg.errors.SerializationFailure
        | psycopg.errors.DeadlockDetected,
    )


_DECODE_ERRORS = (UnknownEventError, ValidationError, ValueError, UnicodeDecodeError)


async def claim_events(
    conn: AsyncConnection, consumer: str, items: Sequence[Consumed]
) -> list[Consumed]:
    """Record the events' ids as processed by ``consumer``, in the caller's transaction;
    returns only those it had not processed before, each once."""
    if not items:
        return []
    rows = await conn.execute(
        text(
            'insert into processed_events (consumer, event_id, topic, partition, "offset")'
            " select :c, * from unnest("
            "  cast(:ids as uuid[]), cast(:topics as text[]), cast(:parts as int[]),"
            "  cast(:offs as bigint[]))"
            " on conflict do nothing returning event_id"
        ),
        {
            "c": consumer,
            "ids": pg_array(i.event.event_id for i in items),
            "topics": pg_text_array(i.topic for i in items),
            "parts": pg_array(i.partition for i in items),
            "offs": pg_array(i.offset for i in items),
        },
    )
    new_ids = {r[0] for r in rows}
    fresh, seen = [], set()
    for item in items:  # a batch can hold the same event twice (re-published)
        if item.event.event_id in new_ids and item.event.event_id not in seen:
            seen.add(item.event.event_id)
            fresh.append(item)
    return fresh


async def partition_lag(consumer: Any) -> dict[tuple[str, int], int]:
    """Per partition assigned to an aiokafka consumer: the log end it last fetched minus
    its position (the next offset handed to the handler, so a batch being handled counts
    as consumed). Partitions not fetched yet are left out rather than guessed."""
    lag: dict[tuple[str, int], int] = {}
    for tp in consumer.assignment():
        end = consumer.highwater(tp)
        if end is None:
            continue
        try:
            position = await consumer.position(tp)
        except IllegalStateError:  # revoked by a rebalance meanwhile
            continue
        lag[(tp.topic, tp.partition)] = max(0, end - position)
    return lag


class _Tally:
    """The committed fate of each record of one batch, across its attempts: a retry after
    a transient failure finds its own earlier work recorded, which is no duplicate."""

    def __init__(self) -> None:
        self._settled: set[tuple[str, int, int]] = set()
        self.duplicates: Counter[str] = Counter()

    def record(self, record: Consumed | ConsumerRecord[Any, Any], *, new: bool) -> None:
        """``new``: applied or dead-lettered now; else skipped as processed before."""
        position = (record.topic, record.partition, record.offset)
        if position in self._settled:
            return
        self._settled.add(position)
        if not new:
            self.duplicates[record.topic] += 1


class IdempotentConsumer:
    """Registers one FastStream batch subscriber whose handler is exactly-once in effect."""

    def __init__(
        self,
        *,
        group_id: str,
        topics: Sequence[TopicSpec],
        handler: BatchHandler,
        db: Database,
        outbox: Outbox,
        relay: OutboxRelay,
        metrics: Metrics,
        topic_prefix: str = "",
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        # The prefix namespaces consumer groups as it does topics (tests, environments).
        self.group_id = f"{topic_prefix}{group_id}"
        self.after_commit = after_commit
        self.topics = [t.qualified(topic_prefix) for t in topics]
        self.handler = handler
        self.db = db
        self.outbox = outbox
        self.relay = relay
        self.metrics = metrics
        self.consumed = 0
        self.dead_lettered = 0
        self._subscriber: BatchSubscriber | None = None

    def register(
        self,
        broker: KafkaBroker,
        *,
        fetch_max_wait_ms: int,
        batch_timeout_ms: int,
        max_records: int,
    ) -> None:
        self._subscriber = broker.subscriber(
            *self.topics,
            group_id=self.group_id,
            batch=True,
            max_records=max_records,
            batch_timeout_ms=batch_timeout_ms,
            fetch_max_wait_ms=fetch_max_wait_ms,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.MANUAL,
            title=f"{self.group_id}:{','.join(self.topics)}",
        )

        @self._subscriber  # the subscriber's aiokafka consumer is read for lag
        async def consume(body: Any, message: KafkaMessage) -> None:
            raw = message.raw_message
            records: tuple[ConsumerRecord[Any, Any], ...] = (
                raw if isinstance(raw, tuple) else (raw,)
            )
            await self.process(records)
            await message.ack()

    async def lag(self) -> dict[tuple[str, int], int]:
        """Records beyond this member's position in each partition it is assigned."""
        consumer = self._subscriber.consumer if self._subscriber else None
        if consumer is None:  # not started, or stopped
            return {}
        return await partition_lag(consumer)

    async def process(self, records: Sequence[ConsumerRecord[Any, Any]]) -> None:
        """Apply a batch; returns only once its effects are committed to the database."""
        started = time.perf_counter()
        staged_before = self.outbox.staged
        decoded: list[Consumed] = []
        poison: list[tuple[ConsumerRecord[Any, Any], BaseException]] = []
        for record in records:
            try:
                event = decode_event(record.value)
            except _DECODE_ERRORS as exc:
                poison.append((record, exc))
                continue
            decoded.append(Consumed(event, record.topic, record.partition, record.offset))

        tally = _Tally()
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(is_transient),
            wait=wait_exponential_jitter(multiplier=0.2, max=10.0),
            before_sleep=self._log_retry,
            reraise=True,
        ):
            with attempt:
                await self._apply(decoded, poison, tally)
        self.consumed += len(records)
        m = self.metrics
        m.handler_seconds.labels(self.group_id).observe(time.perf_counter() - started)
        for topic, n in Counter(r.topic for r in records).items():
            m.events_consumed.labels(self.group_id, topic).inc(n)
        for topic, n in tally.duplicates.items():
            m.events_duplicate.labels(self.group_id, topic).inc(n)
        if self.outbox.staged != staged_before:  # an idle relay costs a transaction a wake
            self.relay.wake()
        if self.after_commit is not None:
            self.after_commit()

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            "consumer_retrying",
            group=self.group_id,
            error=repr(error),
            attempt=state.attempt_number,
        )

    async def _apply(
        self,
        decoded: list[Consumed],
        poison: list[tuple[ConsumerRecord[Any, Any], BaseException]],
        tally: _Tally,
    ) -> None:
        try:
            async with self.db.begin() as conn:
                dead = [await self._dead_letter(conn, r, e) for r, e in poison]
                fresh = await self._claim(conn, decoded)
                if fresh:
                    await self.handler(conn, fresh)
            for (record, exc), dead_lettered in zip(poison, dead, strict=True):
                if dead_lettered:
                    self._log_dead_letter(record, exc)
                tally.record(record, new=dead_lettered)
            applied = {id(item) for item in fresh}
            for item in decoded:
                tally.record(item, new=id(item) in applied)
            return
        except Exception as batch_error:
            if is_transient(batch_error):
                raise
            log.warning("batch_failed_isolating", group=self.group_id, error=repr(batch_error))
        # Something in the batch is poison: apply the events one by one to find it.
        for record, error in poison:
            async with self.db.begin() as conn:
                dead_lettered = await self._dead_letter(conn, record, error)
            if dead_lettered:
                self._log_dead_letter(record, error)
            tally.record(record, new=dead_lettered)
        for item in decoded:
            try:
                async with self.db.begin() as conn:
                    fresh = await self._claim(conn, [item])
                    if fresh:
                        await self.handler(conn, fresh)
                tally.record(item, new=bool(fresh))
            except Exception as exc:
                if is_transient(exc):
                    raise
                tally.record(item, new=await self._dead_letter_event(item, exc))

    async def _dead_letter_event(self, item: Consumed, exc: BaseException) -> bool:
        """False if this record was dead-lettered before (a redelivery)."""
        async with self.db.begin() as conn:
            if not await self._record_dead_letter(
                conn, item.topic, item.partition, item.offset, item.event.event_id, exc
            ):
                return False
            await self.outbox.stage_raw(
                conn,
                topic=dead_letter_topic(item.topic),
                key=str(item.event.correlation_id).encode(),
                headers=self._origin_headers(item.topic, item.partition, item.offset, exc),
                value=item.event.to_json(),
            )
        self.dead_lettered += 1
        self.metrics.events_dead_lettered.labels(self.group_id, item.topic).inc()
        log.error(
            "event_dead_lettered",
            group=self.group_id,
            topic=item.topic,
            offset=item.offset,
            event_id=str(item.event.event_id),
            lead_id=str(item.event.correlation_id),
            error=repr(exc),
        )
        return True

    async def _record_dead_letter(
        self,
        conn: AsyncConnection,
        topic: str,
        partition: int,
        offset: int,
        event_id: uuid.UUID | None,
        exc: BaseException,
    ) -> bool:
        """False if this record was dead-lettered before (a redelivery)."""
        row = await conn.execute(
            text(
                'insert into dead_letters (consumer, topic, partition, "offset", event_id, error)'
                " values (:c, :t, :p, :o, :e, :err) on conflict do nothing returning consumer"
            ),
            {
                "c": self.group_id,
                "t": topic,
                "p": partition,
                "o": offset,
                "e": event_id,
                "err": repr(exc)[:2000],
            },
        )
        return row.first() is not None

    async def _claim(self, conn: AsyncConnection, items: Sequence[Consumed]) -> list[Consumed]:
        return await claim_events(conn, self.group_id, items)

    async def _dead_letter(
        self, conn: AsyncConnection, record: ConsumerRecord[Any, Any], exc: BaseException
    ) -> bool:
        """Stage an undecodable record for ``<topic>.dlq``; False if it was before."""
        if not await self._record_dead_letter(
            conn, record.topic, record.partition, record.offset, None, exc
        ):
            return False
        await self.outbox.stage_raw(
            conn,
            topic=dead_letter_topic(record.topic),
            key=record.key,
            headers=self._origin_headers(record.topic, record.partition, record.offset, exc),
            value=record.value or b"",
        )
        return True

    def _log_dead_letter(self, record: ConsumerRecord[Any, Any], exc: BaseException) -> None:
        self.dead_lettered += 1
        self.metrics.events_dead_lettered.labels(self.group_id, record.topic).inc()
        log.error(
            "record_dead_lettered",
            group=self.group_id,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error=repr(exc)[:500],
        )

    def _origin_headers(
        self, topic: str, partition: int, offset: int, exc: BaseException
    ) -> dict[str, str]:
        return {
            "lx-dlq-origin-topic": topic,
            "lx-dlq-origin-partition": str(partition),
            "lx-dlq-origin-offset": str(offset),
            "lx-dlq-consumer-group": self.group_id,
            "lx-dlq-error": repr(exc)[:1000],
            "lx-dlq-trace": json.dumps(traceback.format_exception(exc)[-3:])[:2000],
            "lx-dlq-failed-at": utcnow().isoformat(),
            "lx-dlq-id": str(uuid.uuid4()),
        }
