"""Rebuild or verify a projection (billing, analytics) from the event log.

Both build a *shadow* copy of the projection in a schema of its own in the projection's
database. The projection's own handler runs over the log, with the same exactly-once
claims as the live consumer. The live tables keep serving reads meanwhile.

- ``rebuild`` builds the shadow up to the log's end, then locks the live tables, catches
  the shadow up to the new end and swaps the contents in one transaction. Readers wait
  only for that swap; the live consumer blocks on the lock and then resumes, deduplicating
  against the rebuilt ``processed_events``. An interrupted rebuild resumes from the
  positions its shadow committed with each batch.
- ``verify`` builds a shadow of exactly the events the live projection has processed,
  compares every table, shows differing rows and exits non-zero on any difference.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from lx_analytics import handlers as analytics_handlers
from lx_analytics.main import TOPICS as ANALYTICS_TOPICS
from lx_analytics.settings import AnalyticsSettings
from lx_billing import handlers as billing_handlers
from lx_billing.main import TOPICS as BILLING_TOPICS
from lx_billing.settings import BillingSettings
from lx_platform.consumer import BatchHandler, Consumed, claim_events
from lx_platform.db import Database, apply_migrations
from lx_platform.settings import KafkaSettings, ServiceSettings
from lx_schemas.envelope import UnknownEventError, decode_event
from lx_schemas.topics import TopicSpec as Topic
from pydantic import ValidationError
from rich.progress import (
    Progress,
    TaskID,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_sre import audit
from lx_sre.progress import progress_bar
from lx_sre.settings import SreSettings

app = typer.Typer(no_args_is_help=True, help="Rebuild or verify a projection from the log.")
BATCH = 2000


@dataclass(frozen=True)
class Projection:
    name: str
    migrations: str
    handler: BatchHandler
    topics: tuple[Topic, ...]
    # Tables holding the projection's state; ``processed_events`` is handled apart.
    tables: tuple[str, ...]
    settings: Callable[[], ServiceSettings]

    def consumer_group(self, settings: ServiceSettings) -> str:
        group: str = getattr(settings, "consumer_group", self.name)
        return f"{settings.kafka.topic_prefix}{group}"


PROJECTIONS = {
    "billing": Projection(
        "billing",
        "lx_billing",
        billing_handlers.project,
        BILLING_TOPICS,
        (
            "usage_monthly",
            "ledger_transactions",
            "ledger_entries",
            "plans",
            "subscriptions",
            "subscription_terms",
            "payments",
            "prepaid_buyers",
            "account_limits",
            "invoices",
            "invoice_lines",
        ),
        BillingSettings,
    ),
    "analytics": Projection(
        "analytics",
        "lx_analytics",
        analytics_handlers.project,
        ANALYTICS_TOPICS,
        # Not export_runs: the exports' audit is no projection state and survives rebuilds.
        ("hourly_stats", "rejections_hourly", "latency_hourly", "exports", "campaign_accounts"),
        AnalyticsSettings,
    ),
}


@dataclass
class Stats:
    records: int = 0
    applied: int = 0
    skipped_poison: int = 0
    skipped_failing: int = 0
    filtered: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def rate(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0


class Shadow:
    """A shadow copy of one projection in schema ``schema`` of the live database."""

    def __init__(self, projection: Projection, live: ServiceSettings, schema: str) -> None:
        self.projection = projection
        self.live_settings = live
        self.kafka: KafkaSettings = live.kafka
        self.schema = schema
        self.consumer = projection.consumer_group(live)
        self.live = Database(live.database_url, pool_size=2)
        self.db = Database(live.database_url, pool_size=2, schema=schema)

    async def close(self) -> None:
        await self.db.dispose()
        await self.live.dispose()

    async def exists(self) -> bool:
        async with self.live.begin() as conn:
            found = await conn.scalar(
                text("select 1 from pg_namespace where nspname = :s"), {"s": self.schema}
            )
        return bool(found)

    async def create(self, *, fresh: bool) -> None:
        async with self.live.begin() as conn:
            if fresh:
                await conn.exec_driver_sql(f'drop schema if exists "{self.schema}" cascade')
            await conn.exec_driver_sql(f'create schema if not exists "{self.schema}"')
        await apply_migrations(self.db, ["lx_platform", self.projection.migrations])
        async with self.db.begin() as conn:
            await conn.exec_driver_sql(
                "create table if not exists shadow_positions (topic text not null,"
                " partition int not null, next_offset bigint not null,"
                " primary key (topic, partition))"
            )

    async def drop(self) -> None:
        async with self.live.begin() as conn:
            await conn.exec_driver_sql(f'drop schema if exists "{self.schema}" cascade')

    async def positions(self) -> dict[TopicPartition, int]:
        async with self.db.begin() as conn:
            rows = await conn.execute(
                text("select topic, partition, next_offset from shadow_positions")
            )
            return {TopicPartition(r.topic, r.partition): r.next_offset for r in rows}

    async def log_ends(self) -> dict[TopicPartition, int]:
        names = [t.qualified(self.kafka.topic_prefix) for t in self.projection.topics]
        admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka.bootstrap_servers)
        await admin.start()
        try:
            described = await admin.describe_topics(names)
        finally:
            await admin.close()
        tps = [
            TopicPartition(d["topic"], p["partition"]) for d in described for p in d["partitions"]
        ]
        consumer = AIOKafkaConsumer(bootstrap_servers=self.kafka.bootstrap_servers)
        await consumer.start()
        try:
            ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
            return ends
        finally:
            await consumer.stop()

    async def catch_up(
        self,
        ends: dict[TopicPartition, int],
        *,
        accept: Callable[[Consumed], bool] | None = None,
        held: list[Consumed] | None = None,
        progress: Progress | None = None,
    ) -> Stats:
        """Apply the log from the committed positions up to ``ends``.

        ``accept`` filters events (verify keeps only what live has processed); events it
        refuses are appended to ``held`` so a later pass can take them.
        """
        stats = Stats()
        started = time.monotonic()
        start = await self.positions()
        todo = {tp: end for tp, end in ends.items() if start.get(tp, 0) < end}
        total = sum(end - start.get(tp, 0) for tp, end in todo.items())
        task: TaskID | None = (
            progress.add_task(f"{self.projection.name} → {self.schema}", total=total)
            if progress and total
            else None
        )
        if not todo:
            return stats
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.kafka.bootstrap_servers,
            enable_auto_commit=False,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_wait_ms=50,
        )
        await consumer.start()
        try:
            consumer.assign(list(todo))
            for tp in todo:
                consumer.seek(tp, start.get(tp, 0))
            while todo:
                fetched = await consumer.getmany(timeout_ms=500, max_records=BATCH)
                batch: list[ConsumerRecord[Any, Any]] = []
                reached: dict[TopicPartition, int] = {}
                for tp, records in fetched.items():
                    inside = [r for r in records if r.offset < todo.get(tp, -1)]
                    batch.extend(inside)
                    if inside:
                        reached[tp] = inside[-1].offset + 1
                if not batch:
                    continue
                await self._apply(batch, reached, stats, accept, held)
                for tp, nxt in reached.items():
                    if nxt >= todo[tp]:
                        consumer.pause(tp)
                        del todo[tp]
                if task is not None and progress:
                    progress.advance(task, len(batch))
        finally:
            await consumer.stop()
        stats.seconds = time.monotonic() - started
        return stats

    async def _apply(
        self,
        batch: list[ConsumerRecord[Any, Any]],
        reached: dict[TopicPartition, int],
        stats: Stats,
        accept: Callable[[Consumed], bool] | None,
        held: list[Consumed] | None,
    ) -> None:
        items: list[Consumed] = []
        for r in batch:
            stats.records += 1
            try:
                item = Consumed(decode_event(r.value), r.topic, r.partition, r.offset)
            except (UnknownEventError, ValidationError, ValueError, UnicodeDecodeError):
                stats.skipped_poison += 1  # the live consumer dead-lettered it too
                continue
            if accept is not None and not accept(item):
                stats.filtered += 1
                if held is not None:
                    held.append(item)
                continue
            items.append(item)
        async with self.db.begin() as conn:
            try:
                async with conn.begin_nested():
                    fresh = await claim_events(conn, self.consumer, items)
                    await self.projection.handler(conn, fresh)
                stats.applied += len(fresh)
            except Exception:
                # As the live consumer does: isolate the failing event, keep the rest.
                for item in items:
                    try:
                        async with conn.begin_nested():
                            one = await claim_events(conn, self.consumer, [item])
                            await self.projection.handler(conn, one)
                        stats.applied += len(one)
                    except Exception:
                        stats.skipped_failing += 1
            await _save_positions(conn, reached)

    async def apply_items(self, items: Sequence[Consumed]) -> int:
        """Apply already-read events (held back by an earlier pass)."""
        if not items:
            return 0
        async with self.db.begin() as conn:
            fresh = await claim_events(conn, self.consumer, items)
            await self.projection.handler(conn, fresh)
        return len(fresh)


async def _save_positions(conn: AsyncConnection, reached: dict[TopicPartition, int]) -> None:
    await conn.execute(
        text(
            "insert into shadow_positions (topic, partition, next_offset) values (:t, :p, :o)"
            " on conflict (topic, partition) do update set next_offset = excluded.next_offset"
        ),
        [{"t": tp.topic, "p": tp.partition, "o": o} for tp, o in reached.items()],
    )


def _lock_sql(tables: Sequence[str], mode: str) -> str:
    # In the live consumer's order (it claims in processed_events, then writes its
    # tables): locking the other way round deadlocks with a batch in flight.
    names = ", ".join(f"public.{t}" for t in ("processed_events", *tables))
    return f"lock table {names} in {mode} mode"


async def rebuild_projection(
    name: str,
    *,
    fresh: bool = False,
    progress: Progress | None = None,
    live: ServiceSettings | None = None,
) -> Stats:
    """Rebuild ``name`` into its shadow, then swap the shadow in atomically."""
    projection = PROJECTIONS[name]
    live = live or projection.settings()
    shadow = Shadow(projection, live, schema=f"lx_rebuild_{name}")
    try:
        resumed = not fresh and await shadow.exists()
        await shadow.create(fresh=fresh)
        stats = await shadow.catch_up(await shadow.log_ends(), progress=progress)
        async with shadow.live.begin() as conn:
            # Writers (the live consumer) wait from here; readers wait only for the swap.
            await conn.exec_driver_sql(_lock_sql(projection.tables, "access exclusive"))
            tail = await shadow.catch_up(await shadow.log_ends())
            # One statement for all: the ledger's entries reference its transactions.
            await conn.exec_driver_sql(
                "truncate " + ", ".join(f"public.{t}" for t in projection.tables)
            )
            for table in projection.tables:  # parents first, as listed
                await conn.exec_driver_sql(
                    f'insert into public.{table} select * from "{shadow.schema}".{table}'
                )
            await conn.execute(
                text("delete from public.processed_events where consumer = :c"),
                {"c": shadow.consumer},
            )
            await conn.execute(
                text(
                    "insert into public.processed_events select * from"
                    f' "{shadow.schema}".processed_events where consumer = :c'
                ),
                {"c": shadow.consumer},
            )
        await shadow.drop()
        stats.records += tail.records
        stats.applied += tail.applied
        stats.extra = {"resumed": resumed, "tail_records": tail.records}
        return stats
    finally:
        await shadow.close()


@dataclass
class Difference:
    table: str
    only_live: list[dict[str, Any]]
    only_rebuilt: list[dict[str, Any]]


async def verify_projection(
    name: str,
    *,
    progress: Progress | None = None,
    live: ServiceSettings | None = None,
    show: int = 20,
) -> tuple[Stats, list[Difference]]:
    """Rebuild in a shadow exactly the events live has processed, then compare tables."""
    projection = PROJECTIONS[name]
    live = live or projection.settings()
    shadow = Shadow(projection, live, schema=f"lx_verify_{name}")

    async def live_ids(conn: AsyncConnection) -> set[Any]:
        rows = await conn.execute(
            text("select event_id from public.processed_events where consumer = :c"),
            {"c": shadow.consumer},
        )
        return {r[0] for r in rows}

    try:
        await shadow.create(fresh=True)
        async with shadow.live.begin() as conn:
            seen = await live_ids(conn)
        held: list[Consumed] = []
        stats = await shadow.catch_up(
            await shadow.log_ends(),
            accept=lambda c: c.event.event_id in seen,
            held=held,
            progress=progress,
        )
        differences: list[Difference] = []
        async with shadow.live.begin() as conn:
            # Live may not write while we compare (reads go on); what it processed since
            # the first pass is taken from the log's tail and from the events held back.
            await conn.exec_driver_sql(_lock_sql(projection.tables, "share"))
            seen = await live_ids(conn)
            later: list[Consumed] = []
            tail = await shadow.catch_up(
                await shadow.log_ends(), accept=lambda c: c.event.event_id in seen, held=later
            )
            stats.applied += tail.applied + await shadow.apply_items(
                [c for c in held if c.event.event_id in seen]
            )
            stats.records += tail.records
            for table in projection.tables:
                differences.append(await _diff(conn, shadow.schema, table, show))
        await shadow.drop()
        return stats, [d for d in differences if d.only_live or d.only_rebuilt]
    finally:
        await shadow.close()


async def _diff(conn: AsyncConnection, schema: str, table: str, show: int) -> Difference:
    async def rows(a: str, b: str) -> list[dict[str, Any]]:
        result = await conn.execute(
            text(f"select * from {a}.{table} except all select * from {b}.{table} limit :n"),
            {"n": show},
        )
        return [json.loads(json.dumps(dict(r._mapping), default=str)) for r in result]

    return Difference(
        table, await rows("public", f'"{schema}"'), await rows(f'"{schema}"', "public")
    )


def _settings_for(name: str) -> ServiceSettings:
    if name not in PROJECTIONS:
        typer.echo(f"unknown projection {name!r}; known: {', '.join(PROJECTIONS)}", err=True)
        raise typer.Exit(2)
    return PROJECTIONS[name].settings()


Name = Annotated[str, typer.Argument(help="billing or analytics")]


@app.command("rebuild")
def rebuild_command(
    name: Name,
    fresh: Annotated[bool, typer.Option(help="discard an interrupted rebuild's shadow")] = False,
) -> None:
    """Rebuild a projection from the log into a shadow, then swap it in atomically."""
    live = _settings_for(name)

    async def run() -> Stats:
        with progress_bar() as progress:
            stats = await rebuild_projection(name, fresh=fresh, progress=progress, live=live)
        sre = SreSettings()
        db = await audit.open_audit(sre)
        try:
            await audit.record(
                db,
                sre,
                "projection rebuild",
                {"projection": name, "fresh": fresh},
                {**stats.__dict__, "rate": stats.rate()},
            )
        finally:
            await db.dispose()
        return stats

    stats = asyncio.run(run())
    typer.echo(
        f"rebuilt\t{name}\trecords={stats.records}\tapplied={stats.applied}"
        f"\tpoison_skipped={stats.skipped_poison}\tfailing_skipped={stats.skipped_failing}"
        f"\tseconds={stats.seconds:.2f}\tevents_per_s={stats.rate():.0f}"
        f"\tresumed={stats.extra.get('resumed')}"
    )


@app.command("verify")
def verify_command(
    name: Name,
    show: Annotated[int, typer.Option(help="differing rows to show per table")] = 20,
) -> None:
    """Rebuild a projection in a shadow and diff it against the live one (exit 1 if any)."""
    live = _settings_for(name)

    async def run() -> tuple[Stats, list[Difference]]:
        with progress_bar() as progress:
            return await verify_projection(name, progress=progress, live=live, show=show)

    stats, differences = asyncio.run(run())
    for d in differences:
        for row in d.only_live:
            typer.echo(f"only_live\t{d.table}\t{json.dumps(row, sort_keys=True)}")
        for row in d.only_rebuilt:
            typer.echo(f"only_rebuilt\t{d.table}\t{json.dumps(row, sort_keys=True)}")
    verdict = "differs" if differences else "equal"
    typer.echo(f"{verdict}\t{name}\trecords={stats.records}\tapplied={stats.applied}")
    if differences:
        raise typer.Exit(1)
