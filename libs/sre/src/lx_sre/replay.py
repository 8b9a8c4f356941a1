"""Replay a range of a topic: re-publish it (filtered) to a topic, or move a group back.

Modelled on ``kafka-consumer-groups --reset-offsets`` (dry run unless ``--execute``; a
group is moved only while it is inactive) and kcat's time windows. A range is
``[start, end)`` per partition: ``--from-time`` starts at the first record at or after
that time, ``--to-time`` ends before the first record at or after that time; offsets
are taken as given, clamped to what the partition still holds. Naive times are UTC.

Re-processing is harmless by design: every consumer records the ids of the events it
applied in the same transaction as their effects, and a replayed record keeps its
value (so its event id); only headers are added.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

import typer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from aiokafka.structs import OffsetAndMetadata
from aiolimiter import AsyncLimiter
from lx_platform.settings import KafkaSettings
from rich.progress import (
    Progress,
)

from lx_sre import audit
from lx_sre.progress import progress_bar
from lx_sre.settings import SreSettings
from lx_sre.topics import (
    GroupState,
    Json,
    Refused,
    admin_client,
    describe_group,
    offsets_client,
    partitions_of,
    print_json,
    print_table,
    qualify,
    refuse_active,
    run,
)

# Headers a replayed record carries besides its original ones.
REPLAYED_FROM = "lx-replayed-from"
REPLAY_ID = "lx-replay-id"
REPLAYED_AT = "lx-replayed-at"
EVENT_TYPE_HEADER = "lx-event-type"
FETCH_RECORDS = 2000
STALL_S = 30.0


# --- pure parts: arguments, ranges, filters, headers ---------------------------------------


def parse_time(value: str) -> int:
    """ISO 8601 -> epoch milliseconds; a time without a zone is UTC."""
    try:
        at = dt.datetime.fromisoformat(value)
    except ValueError:
        raise Refused(f"not an ISO 8601 time: {value!r}") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return int(at.timestamp() * 1000)


@dataclass(frozen=True)
class Bound:
    """One end of a range: a time (epoch ms) or an offset."""

    time_ms: int | None = None
    offset: int | None = None

    def describe(self) -> str:
        if self.time_ms is not None:
            return dt.datetime.fromtimestamp(self.time_ms / 1000, dt.UTC).isoformat()
        return f"offset {self.offset}"


@dataclass(frozen=True)
class ReplayRequest:
    topic: str
    start: Bound
    stop: Bound | None  # None: the partition's end when planned
    partitions: tuple[int, ...] = ()
    keys: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    to_topic: str | None = None
    group: str | None = None
    execute: bool = False
    rate: float | None = None

    @property
    def filtered(self) -> bool:
        return bool(self.keys or self.types)


def build_request(
    topic: str,
    *,
    from_time: str | None = None,
    from_offset: int | None = None,
    to_time: str | None = None,
    to_offset: int | None = None,
    partitions: Sequence[int] = (),
    keys: Sequence[str] = (),
    types: Sequence[str] = (),
    to_topic: str | None = None,
    group: str | None = None,
    execute: bool = False,
    rate: float | None = None,
) -> ReplayRequest:
    """Validate the arguments as a whole; ``Refused`` says what is wrong."""
    if (from_time is None) == (from_offset is None):
        raise Refused("give exactly one of --from-time and --from-offset")
    if to_time is not None and to_offset is not None:
        raise Refused("give at most one of --to-time and --to-offset")
    if (to_topic is None) == (group is None):
        raise Refused("give exactly one target: --to-topic T (re-publish) or --group G (move)")
    if to_topic is not None and to_time is None and to_offset is None:
        raise Refused("re-publishing needs an end: --to-time or --to-offset")
    if group is not None and (keys or types):
        raise Refused(
            "--key/--type filters cannot apply to --group: a group's offsets move for every"
            " record; use --to-topic to re-publish only the matching records"
        )
    if group is not None and rate is not None:
        raise Refused("--rate applies to --to-topic only")
    if rate is not None and rate <= 0:
        raise Refused("--rate must be a positive number of records per second")
    for name, offset in (("--from-offset", from_offset), ("--to-offset", to_offset)):
        if offset is not None and offset < 0:
            raise Refused(f"{name} must not be negative")
    if any(p < 0 for p in partitions):
        raise Refused("--partition must not be negative")
    start = Bound(parse_time(from_time)) if from_time is not None else Bound(offset=from_offset)
    stop: Bound | None = None
    if to_time is not None:
        stop = Bound(parse_time(to_time))
    elif to_offset is not None:
        stop = Bound(offset=to_offset)
    if stop is not None:
        if start.time_ms is not None and stop.time_ms is not None and stop.time_ms <= start.time_ms:
            raise Refused("--to-time must be later than --from-time")
        if start.offset is not None and stop.offset is not None and stop.offset <= start.offset:
            raise Refused("--to-offset must be greater than --from-offset (the end is exclusive)")
    return ReplayRequest(
        topic=topic,
        start=start,
        stop=stop,
        partitions=tuple(sorted(set(partitions))),
        keys=tuple(keys),
        types=tuple(types),
        to_topic=to_topic,
        group=group,
        execute=execute,
        rate=rate,
    )


def resolve_range(
    start: Bound,
    stop: Bound | None,
    *,
    beginning: int,
    end: int,
    start_found: int | None = None,
    stop_found: int | None = None,
) -> tuple[int, int]:
    """A partition's ``[start, end)`` within ``[beginning, end)``.

    ``*_found`` are ``offsets_for_times`` answers for time bounds: the first offset at or
    after the time, ``None`` when no record is that late (the range runs to the end).
    """

    def clamp(offset: int, low: int) -> int:
        return min(max(offset, low), end)

    if start.time_ms is not None:
        first = clamp(end if start_found is None else start_found, beginning)
    else:
        first = clamp(start.offset or 0, beginning)
    if stop is None:
        last = end
    elif stop.time_ms is not None:
        last = clamp(end if stop_found is None else stop_found, first)
    else:
        last = clamp(stop.offset if stop.offset is not None else end, first)
    return first, last


Headers = Sequence[tuple[str, bytes]]


def event_type_of(headers: Headers, value: bytes | None) -> str | None:
    """The event type from its header, else from the JSON body; None if neither says."""
    for name, raw in headers:
        if name == EVENT_TYPE_HEADER:
            return raw.decode(errors="replace")
    try:
        body = json.loads(value or b"")
    except (ValueError, UnicodeDecodeError):
        return None
    kind = body.get("type") if isinstance(body, dict) else None
    return kind if isinstance(kind, str) else None


@dataclass(frozen=True)
class RecordFilter:
    """Keys and event types a record must match (any of each); empty means all."""

    keys: frozenset[bytes] = frozenset()
    types: frozenset[str] = frozenset()

    @classmethod
    def of(cls, request: ReplayRequest) -> RecordFilter:
        return cls(frozenset(k.encode() for k in request.keys), frozenset(request.types))

    def matches(self, key: bytes | None, headers: Headers, value: bytes | None) -> bool:
        if self.keys and key not in self.keys:
            return False
        return not self.types or event_type_of(headers, value) in self.types


def replay_headers(
    original: Headers, source: str, replay_id: uuid.UUID, at: dt.datetime
) -> list[tuple[str, bytes]]:
    """The original headers (a former replay's marks replaced) plus where this came from."""
    ours = (REPLAYED_FROM, REPLAY_ID, REPLAYED_AT)
    kept = [(k, v) for k, v in original if k not in ours]
    return [
        *kept,
        (REPLAYED_FROM, source.encode()),
        (REPLAY_ID, str(replay_id).encode()),
        (REPLAYED_AT, at.isoformat().encode()),
    ]


# --- planning and scanning -----------------------------------------------------------------


@dataclass
class PartitionRange:
    partition: int
    start: int
    end: int
    records: int | None = None  # scanned records in the range (None: not scanned)
    matching: int | None = None
    committed: int | None = None  # the group's offset before a move
    published: int = 0


@dataclass
class Plan:
    request: ReplayRequest
    topic: str  # qualified
    ranges: list[PartitionRange]
    target: str | None = None  # qualified --to-topic
    group: GroupState | None = None
    replay_id: uuid.UUID = field(default_factory=uuid.uuid4)

    def total(self, name: str) -> int | None:
        values = [getattr(r, name) for r in self.ranges]
        return None if any(v is None for v in values) else sum(values)


async def make_plan(kafka: KafkaSettings, request: ReplayRequest) -> Plan:
    """Resolve names, partitions and offset ranges (and the group's state); reads nothing."""
    prefix = kafka.topic_prefix
    topic = qualify(request.topic, prefix)
    plan = Plan(request, topic, [])
    async with admin_client(kafka) as admin:
        known = [p.partition for p in await partitions_of(admin, topic)]
        if request.to_topic is not None:
            plan.target = qualify(request.to_topic, prefix)
            await partitions_of(admin, plan.target)  # refuses a missing target topic
        if request.group is not None:
            group = qualify(request.group, prefix)
            plan.group = await describe_group(admin, group)
            committed = await admin.list_consumer_group_offsets(
                group, partitions=[TopicPartition(topic, p) for p in known]
            )
    unknown = sorted(set(request.partitions) - set(known))
    if unknown:
        raise Refused(f"{topic} has no partition {unknown} (it has 0..{max(known)})")
    chosen = list(request.partitions) or known
    tps = [TopicPartition(topic, p) for p in chosen]
    async with offsets_client(kafka) as consumer:
        beginnings = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        starts = await _times(consumer, tps, request.start)
        stops = await _times(consumer, tps, request.stop)
    for tp in tps:
        first, last = resolve_range(
            request.start,
            request.stop,
            beginning=beginnings[tp],
            end=ends[tp],
            start_found=starts.get(tp),
            stop_found=stops.get(tp),
        )
        part = PartitionRange(tp.partition, first, last)
        if request.group is not None:
            at = committed.get(tp)
            part.committed = at.offset if at is not None and at.offset >= 0 else None
        plan.ranges.append(part)
    return plan


async def _times(
    consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition], bound: Bound | None
) -> dict[TopicPartition, int | None]:
    if bound is None or bound.time_ms is None:
        return {}
    found = await consumer.offsets_for_times(dict.fromkeys(tps, bound.time_ms))
    return {tp: (f.offset if f is not None else None) for tp, f in found.items()}


OnMatch = Callable[[ConsumerRecord[Any, Any]], Awaitable[None]]


async def scan(
    kafka: KafkaSettings,
    topic: str,
    ranges: Sequence[PartitionRange],
    matches: RecordFilter,
    *,
    on_match: OnMatch | None = None,
    after_batch: Callable[[], Awaitable[None]] | None = None,
    progress: Progress | None = None,
) -> None:
    """Read every range once, counting records and matches; ``on_match`` sees matches in
    partition order. Raises ``TimeoutError`` if no record arrives for ``STALL_S``."""
    for r in ranges:
        r.records, r.matching = 0, 0
    todo = {TopicPartition(topic, r.partition): r for r in ranges if r.start < r.end}
    total = sum(r.end - r.start for r in todo.values())
    task = progress.add_task(f"scan {topic}", total=total) if progress is not None else None
    if not todo:
        return
    async with offsets_client(kafka) as consumer:
        consumer.assign(list(todo))
        for tp, r in todo.items():
            consumer.seek(tp, r.start)
        last_progress = time.monotonic()
        while todo:
            fetched = await consumer.getmany(*todo, timeout_ms=500, max_records=FETCH_RECORDS)
            for tp, records in fetched.items():
                r = todo[tp]
                for record in records:
                    if record.offset >= r.end:
                        break
                    r.records = (r.records or 0) + 1
                    if matches.matches(record.key, record.headers, record.value):
                        r.matching = (r.matching or 0) + 1
                        if on_match is not None:
                            await on_match(record)
            if after_batch is not None:
                await after_batch()
            for tp in list(todo):
                position = await consumer.position(tp)
                if position >= todo[tp].end:
                    consumer.pause(tp)
                    del todo[tp]
            if fetched:
                last_progress = time.monotonic()
                if progress is not None and task is not None:
                    progress.update(task, completed=_scanned(ranges))
            elif time.monotonic() - last_progress > STALL_S:
                raise TimeoutError(f"no records from {topic} for {STALL_S:.0f}s: {list(todo)}")
    if progress is not None and task is not None:
        # Offsets can have gaps (compaction, transaction markers): the range is done.
        progress.update(task, completed=total)


def _scanned(ranges: Sequence[PartitionRange]) -> int:
    return sum(r.records or 0 for r in ranges)


# --- execution -----------------------------------------------------------------------------


async def republish(kafka: KafkaSettings, plan: Plan, *, progress: Progress | None = None) -> None:
    """Re-publish the matching records of ``plan`` to its target, in partition order."""
    assert plan.target is not None
    target = plan.target
    by_partition = {r.partition: r for r in plan.ranges}
    limiter = AsyncLimiter(plan.request.rate, 1.0) if plan.request.rate else None
    at = dt.datetime.now(dt.UTC)
    pending: list[tuple[int, asyncio.Future[Any]]] = []
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=kafka.linger_ms,
    )

    async def send(record: ConsumerRecord[Any, Any]) -> None:
        if limiter is not None:
            await limiter.acquire()
        source = f"{record.topic}:{record.partition}:{record.offset}"
        future = await producer.send(
            target,
            record.value,
            key=record.key,
            headers=replay_headers(record.headers, source, plan.replay_id, at),
        )
        pending.append((record.partition, future))

    async def acknowledged() -> None:
        # Wait per fetched batch: nothing counts as published before Kafka has it.
        await asyncio.gather(*(f for _, f in pending))
        for partition, _ in pending:
            by_partition[partition].published += 1
        pending.clear()

    await producer.start()
    try:
        await scan(
            kafka,
            plan.topic,
            plan.ranges,
            RecordFilter.of(plan.request),
            on_match=send,
            after_batch=acknowledged,
            progress=progress,
        )
        await acknowledged()
    finally:
        await producer.stop()


async def move_group(kafka: KafkaSettings, plan: Plan) -> None:
    """Commit each partition's range start for the group, which must be inactive."""
    assert plan.group is not None
    group = plan.group.group
    async with admin_client(kafka) as admin:
        plan.group = await describe_group(admin, group)  # as of now, not as of the plan
    refuse_active(plan.group)
    offsets = {
        TopicPartition(plan.topic, r.partition): OffsetAndMetadata(r.start, "") for r in plan.ranges
    }
    # Assigned by hand, the consumer never joins the group; the broker accepts such a
    # commit only while the group has no members, so a member that joined since the
    # check above makes the commit fail instead of being overridden.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    except (
        CommitFailedError,
        UnknownMemberIdError,
        IllegalGenerationError,
        RebalanceInProgressError,
    ) as exc:
        raise Refused(f"group {group} became active while moving it: {exc}") from None
    finally:
        await consumer.stop()


async def record_audit(settings: SreSettings, plan: Plan) -> int:
    request = plan.request
    params = {**asdict(request), "topic": plan.topic, "target": plan.target}
    if plan.group is not None:
        params["group"] = plan.group.group
    result: dict[str, Any] = {
        "replay_id": str(plan.replay_id),
        "partitions": [_partition_json(plan, r, executed=True) for r in plan.ranges],
    }
    if plan.target is not None:
        result["published"] = plan.total("published")
    db = await audit.open_audit(settings)
    try:
        mode = "replay --to-topic" if plan.target is not None else "replay --group"
        return await audit.record(db, settings, mode, params, result)
    finally:
        await db.dispose()


async def _dry_run(settings: SreSettings, request: ReplayRequest, count: bool) -> Plan:
    plan = await make_plan(settings.kafka, request)
    if count:
        with progress_bar() as progress:
            await scan(
                settings.kafka,
                plan.topic,
                plan.ranges,
                RecordFilter.of(request),
                progress=progress,
            )
    return plan


async def _execute(settings: SreSettings, plan: Plan) -> Plan:
    if plan.target is not None:
        with progress_bar() as progress:
            await republish(settings.kafka, plan, progress=progress)
    else:
        await move_group(settings.kafka, plan)
    await record_audit(settings, plan)
    return plan


# --- the command ---------------------------------------------------------------------------


def _partition_json(plan: Plan, r: PartitionRange, executed: bool) -> dict[str, Any]:
    """What a partition's line means in this mode (a group move publishes nothing)."""
    out = asdict(r)
    if not (executed and plan.target):
        del out["published"]
    if plan.group is None:
        del out["committed"]
    return out


def _print_plan(plan: Plan, *, executed: bool, as_json: bool, err: bool = False) -> None:
    mode = "to-topic" if plan.target is not None else "group"
    published = plan.total("published")
    if as_json:
        print_json(
            {
                "topic": plan.topic,
                "mode": mode,
                "target": plan.target,
                "group": asdict(plan.group) if plan.group else None,
                "executed": executed,
                "replay_id": str(plan.replay_id) if executed else None,
                "partitions": [_partition_json(plan, r, executed) for r in plan.ranges],
                "total": {
                    "records": plan.total("records"),
                    "matching": plan.total("matching"),
                    "published": published if executed and plan.target else None,
                },
            }
        )
        return
    header = ["topic", "partition", "start", "end", "records", "matching"]
    rows: list[list[object]] = [
        [plan.topic, r.partition, r.start, r.end, r.records, r.matching] for r in plan.ranges
    ]
    total: list[object] = ["total", None, None, None, plan.total("records"), plan.total("matching")]
    if plan.group is not None:
        header += ["committed", "new"]
        for row, r in zip(rows, plan.ranges, strict=True):
            row += [r.committed, r.start]
        total += [None, None]
    if executed and plan.target is not None:
        header.append("published")
        for row, r in zip(rows, plan.ranges, strict=True):
            row.append(r.published)
        total.append(plan.total("published"))
    print_table(header, [*rows, total], err=err)


def _summary(plan: Plan, *, executed: bool) -> str:
    if plan.target is not None:
        if executed:
            return (
                f"replayed {plan.total('published')} record(s) from {plan.topic} to"
                f" {plan.target} (replay id {plan.replay_id})"
            )
        return (
            "dry run: nothing changed; --execute re-publishes the matching records to"
            f" {plan.target}"
        )
    assert plan.group is not None
    g = plan.group
    if executed:
        return f"moved group {g.group} to the range start on {len(plan.ranges)} partition(s)"
    note = "" if g.inactive else f"; it is {g.state} with {g.members} member(s): stop it first"
    return f"dry run: nothing changed; --execute moves group {g.group} to the start{note}"


def replay(
    topic: Annotated[str, typer.Argument(help="the topic to replay from")],
    from_time: Annotated[
        str | None, typer.Option(help="range start: first record at/after this ISO time")
    ] = None,
    from_offset: Annotated[int | None, typer.Option(help="range start offset")] = None,
    to_time: Annotated[
        str | None, typer.Option(help="range end (exclusive): first record at/after it")
    ] = None,
    to_offset: Annotated[int | None, typer.Option(help="range end offset (exclusive)")] = None,
    partition: Annotated[
        list[int] | None, typer.Option("--partition", "-p", help="only these partitions")
    ] = None,
    key: Annotated[
        list[str] | None, typer.Option("--key", help="only records with this key")
    ] = None,
    event_type: Annotated[
        list[str] | None, typer.Option("--type", help="only events of this type (repeatable)")
    ] = None,
    to_topic: Annotated[
        str | None, typer.Option(help="re-publish the matching records to this topic")
    ] = None,
    group: Annotated[
        str | None, typer.Option(help="move this (stopped) consumer group to the range start")
    ] = None,
    execute: Annotated[bool, typer.Option(help="do it (default: a dry run)")] = False,
    rate: Annotated[float | None, typer.Option(help="at most this many records per second")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    as_json: Json = False,
) -> None:
    """Dry-run (default) or execute a replay of a range: per partition, the range's start
    and end offsets and how many records match; then re-publish or move a group."""
    settings = SreSettings()
    try:
        request = build_request(
            topic,
            from_time=from_time,
            from_offset=from_offset,
            to_time=to_time,
            to_offset=to_offset,
            partitions=partition or (),
            keys=key or (),
            types=event_type or (),
            to_topic=to_topic,
            group=group,
            execute=execute,
            rate=rate,
        )
    except Refused as refusal:
        typer.echo(f"refused: {refusal}", err=True)
        raise typer.Exit(2) from None
    # With --yes nothing is shown before executing, so the range is read only once.
    plan: Plan = run(_dry_run(settings, request, count=not (execute and yes)))
    if not execute:
        _print_plan(plan, executed=False, as_json=as_json)
        typer.echo(_summary(plan, executed=False), err=True)
        return
    if not yes:
        _print_plan(plan, executed=False, as_json=False, err=True)
        if not _confirmed(_confirmation(plan)):
            typer.echo("refused: not confirmed; nothing changed", err=True)
            raise typer.Exit(2)
    plan = run(_execute(settings, plan))
    _print_plan(plan, executed=True, as_json=as_json)
    typer.echo(_summary(plan, executed=True), err=True)


def _confirmed(question: str) -> bool:
    try:
        return typer.confirm(question, default=False, err=True)
    except typer.Abort:  # no terminal to answer from
        return False


def _confirmation(plan: Plan) -> str:
    if plan.target is not None:
        return f"Re-publish {plan.total('matching')} record(s) of {plan.topic} to {plan.target}?"
    assert plan.group is not None
    return f"Move group {plan.group.group} to these offsets of {plan.topic}?"
