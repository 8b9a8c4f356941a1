"""Dead letters: list, show, retry (re-publish to the origin topic) or drop them.

A consumer moves a record it cannot apply to ``<topic>.dlq`` with headers naming its
origin (``lx-dlq-origin-topic/-partition/-offset``), the consumer group, the error and
when. Kafka cannot delete a record, so what an operator decided (retried, dropped) is
kept in ``dead_letter_actions`` of lxctl's database; a dead letter without a decision
is pending.

A retry re-publishes the record's value (so its event id) with the original record's
key and headers plus replay headers. The consumer that dead-lettered it never claimed
that event id, so it applies it now; every other consumer of the topic skips it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from lx_platform.kafka import dead_letter_topic
from lx_platform.settings import KafkaSettings
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_sre import audit
from lx_sre.replay import PartitionRange, RecordFilter, replay_headers, scan
from lx_sre.settings import SreSettings
from lx_sre.topics import (
    Json,
    Refused,
    admin_client,
    offsets_client,
    partitions_of,
    print_json,
    print_table,
    qualify,
    run,
)

app = typer.Typer(no_args_is_help=True, help="Dead letters: list, show, retry, drop.")

PENDING, RETRIED, DROPPED = "pending", "retried", "dropped"
ERROR_WIDTH = 80
Position = tuple[int, int]  # partition, offset in the dead-letter topic


def dead_letter_name(topic: str, prefix: str) -> str:
    """``lead.received`` or ``lead.received.dlq`` -> ``<prefix>lead.received.dlq``."""
    name = qualify(topic, prefix)
    return name if name.endswith(".dlq") else dead_letter_topic(name)


def truncate(value: str, width: int = ERROR_WIDTH) -> str:
    flat = " ".join(value.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


@dataclass
class DeadLetter:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    origin_topic: str | None
    origin_partition: int | None
    origin_offset: int | None
    consumer_group: str | None
    error: str | None
    failed_at: str | None
    status: str = PENDING
    decided_at: dt.datetime | None = None
    actor: str | None = None
    replay_id: uuid.UUID | None = None
    reason: str | None = None

    @classmethod
    def from_record(
        cls,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes]],
    ) -> DeadLetter:
        pairs = list(headers)
        named = {k: v.decode(errors="replace") for k, v in pairs}

        def number(name: str) -> int | None:
            raw = named.get(name)
            return int(raw) if raw is not None and raw.lstrip("-").isdigit() else None

        return cls(
            topic,
            partition,
            offset,
            key,
            value or b"",
            pairs,
            named.get("lx-dlq-origin-topic"),
            number("lx-dlq-origin-partition"),
            number("lx-dlq-origin-offset"),
            named.get("lx-dlq-consumer-group"),
            named.get("lx-dlq-error"),
            named.get("lx-dlq-failed-at"),
        )

    @property
    def position(self) -> Position:
        return self.partition, self.offset

    @property
    def origin(self) -> tuple[str, int, int] | None:
        if self.origin_topic is None or self.origin_partition is None:
            return None
        if self.origin_offset is None:
            return None
        return self.origin_topic, self.origin_partition, self.origin_offset

    def summary(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "status": self.status,
            "origin_topic": self.origin_topic,
            "origin_partition": self.origin_partition,
            "origin_offset": self.origin_offset,
            "consumer_group": self.consumer_group,
            "error": self.error,
            "failed_at": self.failed_at,
            "decided_at": self.decided_at.isoformat() if self.decided_at else None,
            "actor": self.actor,
            "replay_id": self.replay_id,
            "reason": self.reason,
        }


def pretty_value(value: bytes) -> str:
    """The value as indented JSON when it is JSON, else as text (bytes escaped)."""
    try:
        return json.dumps(json.loads(value), indent=2, sort_keys=True, ensure_ascii=False)
    except (ValueError, UnicodeDecodeError):
        return value.decode("utf-8", errors="backslashreplace")


def choose(
    letters: Sequence[DeadLetter],
    positions: Sequence[Position],
    *,
    all_pending: bool,
    force: bool,
    action: str,
) -> list[DeadLetter]:
    """The dead letters an action applies to; ``Refused`` for unknown or decided ones."""
    if all_pending:
        if positions:
            raise Refused("give offsets or --all-pending, not both")
        return [d for d in letters if d.status == PENDING]
    if not positions:
        raise Refused("give the offsets to act on")
    by_position = {d.position: d for d in letters}
    missing = [p for p in positions if p not in by_position]
    if missing:
        raise Refused(f"no dead letter at {_positions(missing)}")
    chosen = [by_position[p] for p in dict.fromkeys(positions)]
    decided = [d for d in chosen if d.status != PENDING]
    if decided and not force:
        listed = ", ".join(f"{d.offset} ({d.status})" for d in decided)
        raise Refused(f"already decided: {listed}; pass --force to {action} again")
    return chosen


def _positions(positions: Iterable[Position]) -> str:
    return ", ".join(f"partition {p} offset {o}" for p, o in positions)


# --- reading ---------------------------------------------------------------------------


async def read_range(
    kafka: KafkaSettings, topic: str, wanted: dict[int, set[int]] | None = None
) -> list[ConsumerRecord[Any, Any]]:
    """Records of ``topic``: every one (``wanted`` None) or those at the given offsets of
    the given partitions; offsets no longer (or not yet) in the log are skipped."""
    async with admin_client(kafka) as admin:
        partitions = [p.partition for p in await partitions_of(admin, topic)]
    if wanted is not None:
        partitions = [p for p in partitions if p in wanted]
    tps = [TopicPartition(topic, p) for p in partitions]
    if not tps:
        return []
    async with offsets_client(kafka) as consumer:
        beginnings = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
    ranges = []
    for tp in tps:
        low, high = beginnings[tp], ends[tp]
        if wanted is not None:
            inside = [o for o in wanted[tp.partition] if low <= o < high]
            if not inside:
                continue
            low, high = min(inside), max(inside) + 1
        ranges.append(PartitionRange(tp.partition, low, high))
    found: list[ConsumerRecord[Any, Any]] = []

    async def keep(record: ConsumerRecord[Any, Any]) -> None:
        if wanted is None or record.offset in wanted[record.partition]:
            found.append(record)

    await scan(kafka, topic, ranges, RecordFilter(), on_match=keep)
    return sorted(found, key=lambda r: (r.partition, r.offset))


async def load_statuses(conn: AsyncConnection, topic: str) -> dict[Position, dict[str, Any]]:
    rows = await conn.execute(
        text(
            "select dlq_partition, dlq_offset, action, replay_id, reason, at, actor"
            " from dead_letter_actions where dlq_topic = :t"
        ),
        {"t": topic},
    )
    return {(r.dlq_partition, r.dlq_offset): dict(r._mapping) for r in rows}


async def dead_letters(
    settings: SreSettings, topic: str, positions: Sequence[Position] | None = None
) -> list[DeadLetter]:
    """The dead letters of ``topic`` (qualified .dlq name) with their statuses."""
    wanted: dict[int, set[int]] | None = None
    if positions is not None:
        wanted = defaultdict(set)
        for partition, offset in positions:
            wanted[partition].add(offset)
    records = await read_range(settings.kafka, topic, wanted)
    letters = [
        DeadLetter.from_record(topic, r.partition, r.offset, r.key, r.value, r.headers)
        for r in records
    ]
    db = await audit.open_audit(settings)
    try:
        async with db.begin() as conn:
            decided = await load_statuses(conn, topic)
    finally:
        await db.dispose()
    for letter in letters:
        row = decided.get(letter.position)
        if row is not None:
            letter.status = row["action"]
            letter.decided_at = row["at"]
            letter.actor = row["actor"]
            letter.replay_id = row["replay_id"]
            letter.reason = row["reason"]
    return letters


# --- acting ----------------------------------------------------------------------------


async def _mark(
    conn: AsyncConnection,
    settings: SreSettings,
    letters: Sequence[DeadLetter],
    action: str,
    *,
    replay_id: uuid.UUID | None = None,
    reason: str | None = None,
) -> None:
    await conn.execute(
        text(
            "insert into dead_letter_actions (dlq_topic, dlq_partition, dlq_offset, action,"
            " replay_id, reason, actor) values (:t, :p, :o, :a, :r, :why, :actor)"
            " on conflict (dlq_topic, dlq_partition, dlq_offset) do update set"
            " action = excluded.action, replay_id = excluded.replay_id,"
            " reason = excluded.reason, actor = excluded.actor, at = now()"
        ),
        [
            {
                "t": d.topic,
                "p": d.partition,
                "o": d.offset,
                "a": action,
                "r": replay_id,
                "why": reason,
                "actor": settings.actor,
            }
            for d in letters
        ],
    )


async def _originals(
    kafka: KafkaSettings, letters: Sequence[DeadLetter]
) -> dict[tuple[str, int, int], ConsumerRecord[Any, Any]]:
    """The records the dead letters came from, where the origin topic still has them."""
    wanted: dict[str, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    for d in letters:
        if d.origin is not None:
            topic, partition, offset = d.origin
            wanted[topic][partition].add(offset)
    found: dict[tuple[str, int, int], ConsumerRecord[Any, Any]] = {}
    for topic, offsets in wanted.items():
        for r in await read_range(kafka, topic, offsets):
            found[(r.topic, r.partition, r.offset)] = r
    return found


async def retry(
    settings: SreSettings,
    topic: str,
    positions: Sequence[Position],
    *,
    all_pending: bool,
    force: bool,
) -> tuple[uuid.UUID, list[DeadLetter]]:
    """Re-publish the chosen dead letters to their origin topics and mark them retried."""
    letters = await dead_letters(settings, topic, None if all_pending else positions)
    chosen = choose(letters, positions, all_pending=all_pending, force=force, action="retry")
    unknown = [d for d in chosen if d.origin is None]
    if unknown:
        raise Refused(f"no origin headers on {_positions(d.position for d in unknown)}")
    if not chosen:
        return uuid.uuid4(), []
    originals = await _originals(settings.kafka, chosen)
    replay_id, at = uuid.uuid4(), dt.datetime.now(dt.UTC)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        sends = []
        for d in chosen:
            assert d.origin is not None
            # The original record's key keeps the retry on the key's partition (the dead
            # letter is keyed by correlation id, which is not every topic's key).
            original = originals.get(d.origin)
            key = original.key if original is not None else d.key
            headers = list(original.headers) if original is not None else []
            sends.append(
                await producer.send(
                    d.origin[0],
                    d.value,
                    key=key,
                    headers=replay_headers(
                        headers, f"{d.topic}:{d.partition}:{d.offset}", replay_id, at
                    ),
                )
            )
        outcomes = await asyncio.gather(*sends, return_exceptions=True)
    finally:
        await producer.stop()
    sent = [d for d, o in zip(chosen, outcomes, strict=True) if not isinstance(o, BaseException)]
    db = await audit.open_audit(settings)
    try:
        async with db.begin() as conn:
            await _mark(conn, settings, sent, RETRIED, replay_id=replay_id)
            await audit.insert(
                conn,
                settings,
                "dlq retry",
                {"topic": topic, "positions": positions, "all_pending": all_pending},
                {
                    "replay_id": str(replay_id),
                    "retried": [_where(d) for d in sent],
                    "failed": [
                        {**_where(d), "error": repr(o)}
                        for d, o in zip(chosen, outcomes, strict=True)
                        if isinstance(o, BaseException)
                    ],
                },
            )
    finally:
        await db.dispose()
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if failures:
        raise failures[0]
    return replay_id, sent


async def drop(
    settings: SreSettings, topic: str, positions: Sequence[Position], *, reason: str, force: bool
) -> list[DeadLetter]:
    letters = await dead_letters(settings, topic, positions)
    chosen = choose(letters, positions, all_pending=False, force=force, action="drop")
    db = await audit.open_audit(settings)
    try:
        async with db.begin() as conn:
            await _mark(conn, settings, chosen, DROPPED, reason=reason)
            await audit.insert(
                conn,
                settings,
                "dlq drop",
                {"topic": topic, "positions": positions, "reason": reason},
                {"dropped": [_where(d) for d in chosen]},
            )
    finally:
        await db.dispose()
    return chosen


def _where(d: DeadLetter) -> dict[str, Any]:
    return {"partition": d.partition, "offset": d.offset, "origin": d.origin}


# --- commands --------------------------------------------------------------------------

Topic = Annotated[str, typer.Argument(help="origin topic (lead.received) or its .dlq name")]
Partition = Annotated[int, typer.Option("--partition", "-p", help="dead-letter partition")]


@app.command("list")
def list_command(
    topic: Topic,
    status: Annotated[
        str | None, typer.Option(help="only this status: pending, retried or dropped")
    ] = None,
    as_json: Json = False,
) -> None:
    """Every dead letter: offset, status, origin, consumer group, failed at, error."""
    if status is not None and status not in (PENDING, RETRIED, DROPPED):
        typer.echo("refused: --status is pending, retried or dropped", err=True)
        raise typer.Exit(2)
    settings = SreSettings()
    name = dead_letter_name(topic, settings.kafka.topic_prefix)
    letters: list[DeadLetter] = run(dead_letters(settings, name))
    letters = [d for d in letters if status is None or d.status == status]
    if as_json:
        print_json([d.summary() for d in letters])
        return
    print_table(
        (
            "partition",
            "offset",
            "status",
            "origin_topic",
            "origin_partition",
            "origin_offset",
            "group",
            "failed_at",
            "error",
        ),
        (
            (
                d.partition,
                d.offset,
                d.status,
                d.origin_topic,
                d.origin_partition,
                d.origin_offset,
                d.consumer_group,
                d.failed_at,
                truncate(d.error or ""),
            )
            for d in letters
        ),
    )


@app.command("show")
def show_command(
    topic: Topic, offset: int, partition: Partition = 0, as_json: Json = False
) -> None:
    """One dead letter in full: its status, key, every header and its value."""
    settings = SreSettings()
    name = dead_letter_name(topic, settings.kafka.topic_prefix)
    found: list[DeadLetter] = run(dead_letters(settings, name, [(partition, offset)]))
    if not found:
        typer.echo(
            f"refused: no dead letter at {name} partition {partition} offset {offset}", err=True
        )
        raise typer.Exit(2)
    (d,) = found
    key = d.key.decode(errors="backslashreplace") if d.key is not None else None
    headers = [(k, v.decode(errors="backslashreplace")) for k, v in d.headers]
    if as_json:
        try:
            value: Any = json.loads(d.value)
        except (ValueError, UnicodeDecodeError):
            value = d.value.decode(errors="backslashreplace")
        print_json({**d.summary(), "key": key, "headers": dict(headers), "value": value})
        return
    lines = [
        ("topic", d.topic),
        ("partition", d.partition),
        ("offset", d.offset),
        ("status", d.status),
        ("decided_at", d.decided_at),
        ("actor", d.actor),
        ("replay_id", d.replay_id),
        ("reason", d.reason),
        ("key", key),
        *((f"header {k}", v) for k, v in headers),
    ]
    print_table(("field", "value"), lines)
    typer.echo("value")
    typer.echo(pretty_value(d.value))


@app.command("retry")
def retry_command(
    topic: Topic,
    offsets: Annotated[list[int] | None, typer.Argument(help="dead-letter offsets")] = None,
    all_pending: Annotated[bool, typer.Option(help="every pending dead letter")] = False,
    partition: Partition = 0,
    force: Annotated[bool, typer.Option(help="also retry retried or dropped ones")] = False,
    as_json: Json = False,
) -> None:
    """Re-publish dead letters to their origin topic (after the fix) and mark them retried."""
    settings = SreSettings()
    name = dead_letter_name(topic, settings.kafka.topic_prefix)
    positions = [(partition, o) for o in offsets or []]
    replay_id, sent = run(retry(settings, name, positions, all_pending=all_pending, force=force))
    if as_json:
        print_json({"replay_id": replay_id, "retried": [_where(d) for d in sent]})
        return
    print_table(
        ("partition", "offset", "status", "origin_topic", "origin_partition", "origin_offset"),
        ((d.partition, d.offset, RETRIED, *(d.origin or ())) for d in sent),
    )
    typer.echo(f"retried {len(sent)} dead letter(s) (replay id {replay_id})", err=True)


@app.command("drop")
def drop_command(
    topic: Topic,
    offsets: Annotated[list[int], typer.Argument(help="dead-letter offsets")],
    reason: Annotated[str, typer.Option(help="why it is not retried (kept in the audit)")],
    partition: Partition = 0,
    force: Annotated[bool, typer.Option(help="also drop retried ones")] = False,
) -> None:
    """Mark dead letters dropped: they stay in Kafka, decided and audited."""
    if not reason.strip():
        typer.echo("refused: --reason must say why", err=True)
        raise typer.Exit(2)
    settings = SreSettings()
    name = dead_letter_name(topic, settings.kafka.topic_prefix)
    positions = [(partition, o) for o in offsets]
    dropped: list[DeadLetter] = run(drop(settings, name, positions, reason=reason, force=force))
    print_table(
        ("partition", "offset", "status"), ((d.partition, d.offset, DROPPED) for d in dropped)
    )
