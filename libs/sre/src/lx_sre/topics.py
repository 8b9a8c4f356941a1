"""What Kafka holds: topics (offsets, leaders, configs) and consumer groups (lag, state).

Also the small Kafka plumbing the other commands share: qualifying names with the
environment's topic prefix, the admin client, group descriptions and table output.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Annotated, Any

import typer
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError
from lx_platform.kafka import dead_letter_topic
from lx_platform.settings import KafkaSettings
from lx_schemas.topics import ALL_TOPICS

from lx_sre.settings import SreSettings

app = typer.Typer(no_args_is_help=True, help="Topics: partitions, offsets, leaders, configs.")

# Every consumer group of the platform (without the environment's prefix).
KNOWN_GROUPS = ("ingest", "router", "delivery", "billing", "analytics", "admin-trace")
# The configs that decide whether a range can still be replayed.
TOPIC_CONFIGS = ("cleanup.policy", "retention.ms")
# A group whose offsets may be moved: nobody consumes (Dead: it does not exist yet).
INACTIVE_STATES = frozenset({"Empty", "Dead"})

Json = Annotated[bool, typer.Option("--json", help="one JSON document instead of a table")]


class Refused(Exception):
    """A command that will not run as asked (bad arguments, unsafe state): exit code 2."""


def qualify(name: str, prefix: str) -> str:
    """``lead.received`` -> ``<prefix>lead.received``; a name already prefixed is kept."""
    if not prefix or name.startswith(prefix):
        return name
    return f"{prefix}{name}"


def unqualify(name: str, prefix: str) -> str:
    return name[len(prefix) :] if prefix and name.startswith(prefix) else name


def print_table(
    header: Sequence[str], rows: Iterable[Sequence[object]], *, err: bool = False
) -> None:
    """Tab-separated lines under one header line; ``None`` prints as ``-``."""
    typer.echo("\t".join(header), err=err)
    for row in rows:
        typer.echo("\t".join("-" if v is None else str(v) for v in row), err=err)


def print_json(document: object) -> None:
    typer.echo(json.dumps(document, indent=2, sort_keys=True, default=str))


def run(coroutine: Any) -> Any:
    """Run a command's I/O in its own event loop; a refusal exits 2 with its reason, an
    unreachable or failing Kafka exits 1 with the error."""
    try:
        return asyncio.run(coroutine)
    except Refused as refusal:
        typer.echo(f"refused: {refusal}", err=True)
        raise typer.Exit(2) from None
    except (KafkaError, TimeoutError) as failure:
        typer.echo(f"failed: {failure!r}", err=True)
        raise typer.Exit(1) from None


@asynccontextmanager
async def admin_client(kafka: KafkaSettings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


@asynccontextmanager
async def offsets_client(kafka: KafkaSettings) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer in no group: for offsets, times and reads by position only."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    # Let the consumer's background task begin: aiokafka 0.14 raises CancelledError from
    # stop() when that task is cancelled before it ever ran.
    await asyncio.sleep(0)
    try:
        yield consumer
    finally:
        await consumer.stop()


@dataclass(frozen=True)
class PartitionInfo:
    partition: int
    leader: int


async def partitions_of(admin: AIOKafkaAdminClient, topic: str) -> list[PartitionInfo]:
    """The topic's partitions; ``Refused`` if it does not exist."""
    (described,) = await admin.describe_topics([topic])
    if described["error_code"] or not described["partitions"]:
        raise Refused(f"topic {topic} does not exist")
    return sorted(
        (PartitionInfo(p["partition"], p["leader"]) for p in described["partitions"]),
        key=lambda p: p.partition,
    )


async def existing_topics(admin: AIOKafkaAdminClient) -> set[str]:
    return set(await admin.list_topics())


@dataclass(frozen=True)
class GroupState:
    group: str
    state: str  # Stable, Empty, PreparingRebalance, CompletingRebalance, Dead
    members: int

    @property
    def inactive(self) -> bool:
        return self.state in INACTIVE_STATES and self.members == 0


async def describe_group(admin: AIOKafkaAdminClient, group: str) -> GroupState:
    # One group per request: aiokafka 0.14 decodes DescribeGroups v3 answers with the v2
    # schema, which fails on the second group of a multi-group answer.
    (response,) = await admin.describe_consumer_groups([group])
    (described,) = response.to_object()["groups"]
    return GroupState(group, described["state"], len(described["members"]))


def refuse_active(group: GroupState) -> None:
    """As ``kafka-consumer-groups --reset-offsets``: only an inactive group is moved."""
    if not group.inactive:
        raise Refused(
            f"offsets of group {group.group} can only be reset if the group is inactive,"
            f" but its state is {group.state} with {group.members} active member(s);"
            " stop its consumers first"
        )


# --- topics describe -------------------------------------------------------------------


@dataclass(frozen=True)
class TopicPartitionRow:
    topic: str
    partition: int
    leader: int
    beginning: int
    end: int
    cleanup_policy: str | None
    retention_ms: str | None


async def describe_topics(kafka: KafkaSettings, names: Sequence[str]) -> list[TopicPartitionRow]:
    prefix = kafka.topic_prefix
    async with admin_client(kafka) as admin:
        if names:
            topics = [qualify(n, prefix) for n in names]
        else:
            existing = await existing_topics(admin)
            every = [n for s in ALL_TOPICS for n in (s.name, dead_letter_topic(s.name))]
            topics = [t for t in (qualify(n, prefix) for n in every) if t in existing]
        partitions = {t: await partitions_of(admin, t) for t in topics}
        configs = await _topic_configs(admin, topics)
    tps = [TopicPartition(t, p.partition) for t, ps in partitions.items() for p in ps]
    async with offsets_client(kafka) as consumer:
        beginnings = await consumer.beginning_offsets(tps) if tps else {}
        ends = await consumer.end_offsets(tps) if tps else {}
    return [
        TopicPartitionRow(
            topic,
            p.partition,
            p.leader,
            beginnings[TopicPartition(topic, p.partition)],
            ends[TopicPartition(topic, p.partition)],
            configs.get(topic, {}).get("cleanup.policy"),
            configs.get(topic, {}).get("retention.ms"),
        )
        for topic, ps in partitions.items()
        for p in ps
    ]


async def _topic_configs(
    admin: AIOKafkaAdminClient, topics: Sequence[str]
) -> dict[str, dict[str, str]]:
    if not topics:
        return {}
    wanted = dict.fromkeys(TOPIC_CONFIGS)
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, t, wanted) for t in topics]
    )
    out: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            out[resource["resource_name"]] = {
                e["config_names"]: e["config_value"] for e in resource["config_entries"]
            }
    return out


@app.command("describe")
def describe_command(
    topics: Annotated[
        list[str] | None,
        typer.Argument(help="topics (default: every platform topic and its .dlq that exists)"),
    ] = None,
    as_json: Json = False,
) -> None:
    """Per partition: leader, beginning and end offsets; retention and cleanup policy."""
    settings = SreSettings()
    rows: list[TopicPartitionRow] = run(describe_topics(settings.kafka, topics or []))
    if as_json:
        print_json([asdict(r) for r in rows])
        return
    print_table(
        ("topic", "partition", "leader", "beginning", "end", "cleanup.policy", "retention.ms"),
        (
            (r.topic, r.partition, r.leader, r.beginning, r.end, r.cleanup_policy, r.retention_ms)
            for r in rows
        ),
    )


# --- lag ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LagRow:
    group: str
    topic: str | None
    partition: int | None
    committed: int | None
    end: int | None
    lag: int | None
    state: str
    members: int


def lag_of(committed: int | None, beginning: int, end: int) -> int:
    """What the group still has to read; without a commit it starts at the beginning
    (the platform's consumers reset to ``earliest``)."""
    start = beginning if committed is None or committed < 0 else committed
    return max(end - start, 0)


async def group_lag(kafka: KafkaSettings, groups: Sequence[str]) -> list[LagRow]:
    prefix = kafka.topic_prefix
    async with admin_client(kafka) as admin:
        if groups:
            names = [qualify(g, prefix) for g in groups]
        else:
            existing = {g for g, *_ in await admin.list_consumer_groups()}
            names = [q for q in (qualify(g, prefix) for g in KNOWN_GROUPS) if q in existing]
        described = [await describe_group(admin, g) for g in names]
        committed = {g: await admin.list_consumer_group_offsets(g) for g in names}
        # Every partition of each topic the group has committed on, committed or not.
        partitions = {
            t: await partitions_of(admin, t)
            for t in sorted({tp.topic for offsets in committed.values() for tp in offsets})
        }
    tps = [TopicPartition(t, p.partition) for t, ps in partitions.items() for p in ps]
    async with offsets_client(kafka) as consumer:
        beginnings = await consumer.beginning_offsets(tps) if tps else {}
        ends = await consumer.end_offsets(tps) if tps else {}
    rows: list[LagRow] = []
    for group in described:
        offsets = committed[group.group]
        topics = sorted({tp.topic for tp in offsets})
        if not topics:
            rows.append(LagRow(group.group, None, None, None, None, None, group.state, 0))
        for topic in topics:
            for p in partitions[topic]:
                tp = TopicPartition(topic, p.partition)
                at = offsets.get(tp)
                done = at.offset if at is not None and at.offset >= 0 else None
                rows.append(
                    LagRow(
                        group.group,
                        topic,
                        p.partition,
                        done,
                        ends[tp],
                        lag_of(done, beginnings[tp], ends[tp]),
                        group.state,
                        group.members,
                    )
                )
    return rows


def lag(
    group: Annotated[
        list[str] | None,
        typer.Option("--group", "-g", help="a consumer group (repeatable); default: known ones"),
    ] = None,
    as_json: Json = False,
) -> None:
    """Per consumer group and partition: committed offset, end offset, lag; group state."""
    settings = SreSettings()
    rows: list[LagRow] = run(group_lag(settings.kafka, group or []))
    if not rows and not group:
        typer.echo(
            f"no platform consumer group exists (prefix {settings.kafka.topic_prefix!r})",
            err=True,
        )
    if as_json:
        print_json([asdict(r) for r in rows])
        return
    print_table(
        ("group", "topic", "partition", "committed", "end", "lag", "state", "members"),
        (
            (r.group, r.topic, r.partition, r.committed, r.end, r.lag, r.state, r.members)
            for r in rows
        ),
    )
