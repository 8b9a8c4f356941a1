"""lxctl against real Kafka and PostgreSQL: topics, lag, replay and dead letters.

Each test runs the CLI as a person would (its own event loop, settings from the
environment) on topics and consumer groups of its own prefix.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from fastapi import FastAPI
from lx_analytics.main import TOPICS as ANALYTICS_TOPICS
from lx_analytics.main import create_service as create_analytics
from lx_analytics.settings import AnalyticsSettings
from lx_devstack.infra import Infra
from lx_platform.consumer import Consumed
from lx_platform.db import Database
from lx_platform.kafka import ensure_topics
from lx_platform.runtime import Runtime, build_runtime, create_app
from lx_platform.settings import KafkaSettings, ServiceSettings
from lx_schemas import Event, topics
from lx_schemas import events as ev
from lx_schemas.rules import Payout
from lx_sre.cli import app as lxctl_app
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from typer.testing import CliRunner, Result

from tests.support.kafka import publish_raw, read_records, read_to_end
from tests.support.services import OPERATOR, eventually, serving, settings_for
from tests.support.settle import Position, publish, wait_consumed

ACCOUNT, CAMPAIGN, SOURCE = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
BUYERS = (uuid.uuid4(), uuid.uuid4())
T0 = dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC)


# --- the CLI and its audit database ------------------------------------------------------


@pytest.fixture(scope="module")
def sre_url(infra: Infra, isolation: str) -> str:
    name = f"{isolation}_sre"
    infra.create_database(name)
    return infra.dsn(name)


def cli_env(infra: Infra, prefix: str, sre_url: str) -> dict[str, str | None]:
    return {
        "LX_KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
        "LX_KAFKA_TOPIC_PREFIX": prefix,
        "LX_SRE_DATABASE_URL": sre_url,
        "LX_SRE_ACTOR": "test-sre",
    }


async def lxctl(env: dict[str, str | None], *args: str) -> Result:
    # The command runs its own event loop (asyncio.run), as it does from a shell.
    return await asyncio.to_thread(CliRunner().invoke, lxctl_app, list(args), env=env)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}{result.exception!r}"
    return result


async def audit_rows(sre_url: str) -> list[dict[str, Any]]:
    db = Database(sre_url, pool_size=1)
    try:
        async with db.begin() as conn:
            if not await conn.scalar(text("select to_regclass('audit')")):
                return []
            rows = await conn.execute(text("select * from audit order by id"))
            return [dict(r._mapping) for r in rows]
    finally:
        await db.dispose()


# --- events --------------------------------------------------------------------------------


def ref(lead: uuid.UUID) -> dict[str, Any]:
    return {"lead_id": lead, "campaign_id": CAMPAIGN, "source_id": SOURCE}


def envelope(lead: uuid.UUID, n: int) -> dict[str, Any]:
    at = T0 + dt.timedelta(minutes=11 * n)
    return {"account_id": ACCOUNT, "correlation_id": lead, "producer": "test", "occurred_at": at}


def outcomes(lead: uuid.UUID, n: int) -> list[tuple[Event, uuid.UUID]]:
    """A lead's delivery.outcome events: a rejected attempt, then sold (even n) or unsold."""
    attempt = ev.DeliveryAttempted.new(
        **envelope(lead, n),
        payload=ev.DeliveryAttemptedPayload(
            **ref(lead),
            buyer_id=BUYERS[0],
            delivery_id=uuid.uuid4(),
            attempt=1,
            result=ev.DeliveryResult.REJECTED,
            latency_ms=4.0,
        ),
    )
    final: Event
    if n % 2 == 0:
        final = ev.LeadSold.new(
            **envelope(lead, n),
            payload=ev.LeadSoldPayload(
                **ref(lead),
                buyer_id=BUYERS[1],
                delivery_id=uuid.uuid4(),
                price=Decimal("12.50"),
                payout=Decimal("7.50"),
            ),
        )
    else:
        final = ev.LeadUnsold.new(
            **envelope(lead, n),
            payload=ev.LeadUnsoldPayload(
                **ref(lead), reason=ev.ExhaustionReason.ALL_BUYERS_DECLINED
            ),
        )
    return [(attempt, lead), (final, lead)]


def lead_story(n: int) -> list[tuple[Event, uuid.UUID]]:
    """What analytics reads of one lead: received, offered, then its outcomes."""
    lead = uuid.uuid4()
    received = ev.LeadReceived.new(
        **envelope(lead, n),
        payload=ev.LeadReceivedPayload(**ref(lead), lead=ev.LeadContent(fields={})),
    )
    routed = ev.LeadRouted.new(
        **envelope(lead, n),
        payload=ev.LeadRoutedPayload(
            **ref(lead),
            buyer_id=BUYERS[0],
            attempt=1,
            delivery_id=uuid.uuid4(),
            price=Decimal("12.50"),
            payout=Payout(fixed=Decimal("0.00")),
            lead=ev.LeadContent(fields={}),
        ),
    )
    return [(received, lead), (routed, lead), *outcomes(lead, n)]


def header(record: ConsumerRecord[Any, Any], name: str) -> str | None:
    values = [v.decode() for k, v in record.headers if k == name]
    return values[0] if values else None


async def log_ends(bootstrap: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
        return {tp.partition: end for tp, end in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


def last_positions(topic: str, ends: dict[int, int]) -> list[Position]:
    return [(topic, p, end - 1) for p, end in ends.items() if end]


async def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: o.offset for tp, o in offsets.items() if tp.topic == topic}


# --- replay of a time range to another topic ---------------------------------------------


class Window:
    """delivery.outcome holding batches A, B, C published before, inside and after a window."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.topic = f"{prefix}delivery.outcome"
        self.target = f"{prefix}outcome.replayed"
        self.before: list[Position] = []
        self.inside: list[Position] = []
        self.inside_events: list[tuple[Event, uuid.UUID]] = []
        self.start = self.stop = ""


@pytest.fixture(scope="module")
async def window(infra: Infra, isolation: str) -> Window:
    w = Window(f"{isolation}w.")
    kafka = KafkaSettings(bootstrap_servers=infra.kafka_bootstrap, topic_prefix=w.prefix)
    await ensure_topics(kafka, [topics.DELIVERY_OUTCOME])
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(w.target, 3, 1)])
    finally:
        await admin.close()

    async def boundary() -> str:
        # Records carry their producer's time (CreateTime); keep clear of the boundary's ms.
        await asyncio.sleep(0.05)
        at = dt.datetime.now(dt.UTC).isoformat()
        await asyncio.sleep(0.05)
        return at

    bootstrap = infra.kafka_bootstrap
    w.before = await publish(
        bootstrap, w.prefix, [e for n in range(4) for e in outcomes(uuid.uuid4(), n)]
    )
    w.start = await boundary()
    w.inside_events = [e for n in range(6) for e in outcomes(uuid.uuid4(), n)]
    w.inside = await publish(bootstrap, w.prefix, w.inside_events)
    w.stop = await boundary()
    await publish(bootstrap, w.prefix, [e for n in range(3) for e in outcomes(uuid.uuid4(), n)])
    return w


async def test_a_time_range_dry_run_reports_each_partitions_range_and_matches_and_changes_nothing(
    window: Window, infra: Infra, sre_url: str
) -> None:
    env = cli_env(infra, window.prefix, sre_url)
    audited = len(await audit_rows(sre_url))
    result = ok(
        await lxctl(
            env,
            "replay",
            "delivery.outcome",
            "--from-time",
            window.start,
            "--to-time",
            window.stop,
            "--type",
            "LeadSold",
            "--to-topic",
            "outcome.replayed",
            "--json",
        )
    )
    plan = json.loads(result.stdout)

    # Fresh topic: before the window a partition holds offsets 0..A-1, inside A..A+B-1.
    count_before = {p: 0 for p in range(topics.DELIVERY_OUTCOME.partitions)}
    count_inside = dict(count_before)
    sold_inside = dict(count_before)
    for _, p, _ in window.before:
        count_before[p] += 1
    for (event, _), (_, p, _) in zip(window.inside_events, window.inside, strict=True):
        count_inside[p] += 1
        sold_inside[p] += isinstance(event, ev.LeadSold)
    assert plan["topic"] == window.topic and plan["target"] == window.target
    assert plan["executed"] is False
    assert [
        (r["partition"], r["start"], r["end"], r["records"], r["matching"])
        for r in plan["partitions"]
    ] == [
        (p, count_before[p], count_before[p] + count_inside[p], count_inside[p], sold_inside[p])
        for p in sorted(count_before)
    ]
    assert plan["total"] == {"records": 12, "matching": 3, "published": None}

    # The plain output says the same, one tab-separated line per partition.
    table = ok(
        await lxctl(
            env,
            "replay",
            "delivery.outcome",
            "--from-time",
            window.start,
            "--to-time",
            window.stop,
            "--to-topic",
            "outcome.replayed",
        )
    )
    lines = [line.split("\t") for line in table.stdout.splitlines()]
    assert lines[0] == ["topic", "partition", "start", "end", "records", "matching"]
    assert lines[-1] == ["total", "-", "-", "-", "12", "12"]
    assert "dry run: nothing changed" in table.stderr

    # --execute asks first (the plan goes to stderr); declining changes nothing either.
    whole_log = ["--from-offset", "0", "--to-offset", "99", "--to-topic", "outcome.replayed"]
    declined = await asyncio.to_thread(
        CliRunner().invoke,
        lxctl_app,
        ["replay", "delivery.outcome", *whole_log, "--execute"],
        input="n\n",
        env=env,
    )
    assert declined.exit_code == 2, declined.output
    assert "Re-publish 26 record(s) of" in declined.stderr  # 8 before, 12 inside, 6 after
    assert "not confirmed; nothing changed" in declined.stderr

    assert set((await log_ends(infra.kafka_bootstrap, window.target)).values()) == {0}
    assert len(await audit_rows(sre_url)) == audited


async def test_executing_republishes_exactly_the_filtered_events_with_replay_headers(
    window: Window, infra: Infra, sre_url: str
) -> None:
    env = cli_env(infra, window.prefix, sre_url)
    window_args = ["--from-time", window.start, "--to-time", window.stop]
    sold_lead = next(k for e, k in window.inside_events if isinstance(e, ev.LeadSold))
    by_key = ok(
        await lxctl(
            env,
            "replay",
            "delivery.outcome",
            *window_args,
            "--key",
            str(sold_lead),
            "--type",
            "LeadSold",
            "--to-topic",
            "outcome.replayed",
            "--execute",
            "--yes",
            "--json",
        )
    )
    assert json.loads(by_key.stdout)["total"]["published"] == 1
    attempts = ok(
        await lxctl(
            env,
            "replay",
            "delivery.outcome",
            *window_args,
            "--type",
            "DeliveryAttempted",
            "--to-topic",
            "outcome.replayed",
            "--rate",
            "100",
            "--execute",
            "--yes",
        )
    )
    assert attempts.stdout.splitlines()[-1].split("\t")[-1] == "6"
    assert "replayed 6 record(s)" in attempts.stderr

    replayed = await read_to_end(infra.kafka_bootstrap, window.target)
    source = {
        f"{t}:{p}:{o}": (event, key)
        for (event, key), (t, p, o) in zip(window.inside_events, window.inside, strict=True)
    }
    expected = {
        (str(k).encode(), e.to_json())
        for e, k in window.inside_events
        if isinstance(e, ev.DeliveryAttempted) or (isinstance(e, ev.LeadSold) and k == sold_lead)
    }
    assert len(replayed) == 7
    assert {(r.key, r.value) for r in replayed} == expected
    for r in replayed:
        origin = header(r, "lx-replayed-from")
        assert origin is not None and origin in source
        event, key = source[origin]
        assert (r.key, r.value) == (str(key).encode(), event.to_json())  # byte for byte
        assert header(r, "lx-event-type") == event.type  # original headers kept
        assert header(r, "lx-event-id") == str(event.event_id)
        assert header(r, "lx-replayed-at") is not None
    assert len({header(r, "lx-replay-id") for r in replayed}) == 2  # one id per run

    rows = await audit_rows(sre_url)
    assert [r["command"] for r in rows[-2:]] == ["replay --to-topic", "replay --to-topic"]
    assert [r["result"]["published"] for r in rows[-2:]] == [1, 6]
    assert rows[-1]["params"]["types"] == ["DeliveryAttempted"]
    assert rows[-1]["actor"] == "test-sre"
    assert {r["result"]["replay_id"] for r in rows[-2:]} == {
        header(r, "lx-replay-id") for r in replayed
    }


async def test_topics_describe_shows_offsets_leaders_and_retention(
    window: Window, infra: Infra, sre_url: str
) -> None:
    env = cli_env(infra, window.prefix, sre_url)
    result = ok(await lxctl(env, "topics", "describe", "delivery.outcome", "--json"))
    rows = json.loads(result.stdout)
    ends = await log_ends(infra.kafka_bootstrap, window.topic)
    assert [(r["partition"], r["beginning"], r["end"]) for r in rows] == [
        (p, 0, ends[p]) for p in sorted(ends)
    ]
    assert {(r["cleanup_policy"], r["retention_ms"]) for r in rows} == {("delete", "-1")}
    assert all(r["leader"] >= 0 for r in rows)
    # Without names: every platform topic of the prefix that exists, with its .dlq.
    every = ok(await lxctl(env, "topics", "describe"))
    listed = {line.split("\t")[0] for line in every.stdout.splitlines()[1:]}
    assert listed == {window.topic, f"{window.topic}.dlq"}


# --- replay into a live projection's own input, and moving its group ------------------------


async def test_replays_and_a_group_reset_change_no_projection_and_an_active_group_is_refused(
    infra: Infra, isolation: str, sre_url: str
) -> None:
    settings = settings_for(AnalyticsSettings, infra, isolation, "analytics")
    prefix, bootstrap = settings.kafka.topic_prefix, infra.kafka_bootstrap
    group = f"{prefix}analytics"
    env = cli_env(infra, prefix, sre_url)
    received = topics.LEAD_RECEIVED.qualified(prefix)
    inputs = [
        received,
        *(t.qualified(prefix) for t in (topics.LEAD_ROUTED, topics.DELIVERY_OUTCOME)),
    ]

    async with serving(create_analytics(settings)) as (client, rt):
        positions = await publish(bootstrap, prefix, [e for n in range(12) for e in lead_story(n)])
        await wait_consumed(bootstrap, group, positions)
        before, claimed = await hourly_stats(client), await processed(rt)
        assert sum(r["received"] for r in before) == 12 and claimed == 48

        now = dt.datetime.now(dt.UTC).isoformat()
        for topic in ("lead.received", "delivery.outcome"):
            ok(
                await lxctl(
                    env,
                    "replay",
                    topic,
                    "--from-offset",
                    "0",
                    "--to-time",
                    now,
                    "--to-topic",
                    topic,
                    "--execute",
                    "--yes",
                )
            )
        replayed_to = [p for t in inputs for p in last_positions(t, await log_ends(bootstrap, t))]
        await wait_consumed(bootstrap, group, replayed_to)
        assert await hourly_stats(client) == before
        assert await processed(rt) == claimed  # every replayed event id was known

        lag = json.loads(ok(await lxctl(env, "lag", "--group", "analytics", "--json")).stdout)
        # Every topic analytics consumes, the replayed ones among them.
        assert {r["topic"] for r in lag} == {t.qualified(prefix) for t in ANALYTICS_TOPICS}
        assert set(inputs) <= {r["topic"] for r in lag}
        assert {(r["state"], r["members"], r["lag"]) for r in lag} == {("Stable", 1, 0)}

        refused = await lxctl(
            env,
            "replay",
            "lead.received",
            "--from-offset",
            "0",
            "--group",
            "analytics",
            "--execute",
            "--yes",
        )
        assert refused.exit_code == 2, refused.output
        assert f"offsets of group {group} can only be reset if the group is inactive" in (
            refused.stderr
        )
        assert "with 1 active member(s)" in refused.stderr
        assert (await lxctl(env, "lag", "--json")).exit_code == 0

    ends = await log_ends(bootstrap, received)
    assert await committed(bootstrap, group, received) == ends  # the refusal moved nothing

    async def stopped() -> list[dict[str, Any]] | None:
        rows: list[dict[str, Any]] = json.loads(ok(await lxctl(env, "lag", "--json")).stdout)
        return rows if {r["state"] for r in rows} == {"Empty"} else None

    # Known groups only (the other tests' groups have other prefixes).
    rows = await eventually(stopped, within=15, what=f"{group} empty")
    assert {(r["group"], r["members"]) for r in rows} == {(group, 0)}

    dry = ok(
        await lxctl(env, "replay", "lead.received", "--from-offset", "0", "--group", "analytics")
    )
    assert dry.stdout.splitlines()[0].split("\t")[-2:] == ["committed", "new"]
    assert await committed(bootstrap, group, received) == ends  # a dry run moves nothing
    ok(
        await lxctl(
            env,
            "replay",
            "lead.received",
            "--from-offset",
            "0",
            "--group",
            "analytics",
            "--execute",
            "--yes",
        )
    )
    assert await committed(bootstrap, group, received) == dict.fromkeys(ends, 0)
    moved = (await audit_rows(sre_url))[-1]
    assert moved["command"] == "replay --group" and moved["params"]["group"] == group

    # The projection re-reads lead.received from the start and ends where it was.
    async with serving(create_analytics(settings)) as (client, rt):
        await wait_consumed(bootstrap, group, last_positions(received, ends))
        assert await hourly_stats(client) == before
        assert await processed(rt) == claimed


async def hourly_stats(client: Any) -> list[dict[str, Any]]:
    response = await client.get("/v1/stats/hourly", headers=OPERATOR)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    return rows


async def processed(rt: Runtime) -> int:
    async with rt.db.begin() as conn:
        return int(await conn.scalar(text("select count(*) from processed_events")) or 0)


# --- dead letters ------------------------------------------------------------------------


async def accept_configured_leads(conn: AsyncConnection, batch: Sequence[Consumed]) -> None:
    """A consumer that rejects a lead whose campaign it has no configuration for."""
    for item in batch:
        event = item.event
        assert isinstance(event, ev.LeadReceived)
        known = await conn.scalar(
            text("select 1 from configured_campaigns where campaign_id = :c"),
            {"c": event.payload.campaign_id},
        )
        if not known:
            raise LookupError(f"campaign {event.payload.campaign_id} is not configured")
        await conn.execute(
            text("insert into accepted_leads (lead_id) values (:l)"), {"l": event.payload.lead_id}
        )


def strict_service(settings: ServiceSettings) -> FastAPI:
    """A service on the platform's runtime and idempotent consumer, as every service is."""
    rt = build_runtime("strict", settings, migrations=[])
    rt.consume(group_id="strict", topics=[topics.LEAD_RECEIVED], handler=accept_configured_leads)
    return create_app(rt, title="strict")


def received_lead(campaign: uuid.UUID) -> tuple[ev.LeadReceived, uuid.UUID]:
    lead = uuid.uuid4()
    event = ev.LeadReceived.new(
        **envelope(lead, 0),
        payload=ev.LeadReceivedPayload(
            lead_id=lead, campaign_id=campaign, source_id=SOURCE, lead=ev.LeadContent(fields={})
        ),
    )
    return event, lead


async def test_poison_is_dead_lettered_listed_dropped_and_a_rejected_event_retried_after_the_fix(
    infra: Infra, isolation: str, sre_url: str
) -> None:
    settings = settings_for(ServiceSettings, infra, f"{isolation}d", "strict", http_port=0)
    prefix, bootstrap = settings.kafka.topic_prefix, infra.kafka_bootstrap
    env = cli_env(infra, prefix, sre_url)
    topic = topics.LEAD_RECEIVED.qualified(prefix)
    dlq = f"{topic}.dlq"
    db = Database(settings.database_url, pool_size=1)
    async with db.begin() as conn:
        await conn.exec_driver_sql(
            "create table configured_campaigns (campaign_id uuid primary key)"
        )
        await conn.exec_driver_sql("create table accepted_leads (lead_id uuid primary key)")
        await conn.execute(text("insert into configured_campaigns values (:c)"), {"c": CAMPAIGN})

    async def accepted() -> set[uuid.UUID]:
        async with db.begin() as conn:
            return {r[0] for r in await conn.execute(text("select lead_id from accepted_leads"))}

    new_campaign = uuid.uuid4()
    control, control_lead = received_lead(CAMPAIGN)
    rejected, rejected_lead = received_lead(new_campaign)
    try:
        async with serving(strict_service(settings)):
            await publish_raw(bootstrap, topic, b"{not json", key=b"garbage")
            (_, *rejected_at), (_, *control_at) = await publish(
                bootstrap, prefix, [(rejected, rejected_lead), (control, control_lead)]
            )
            dead = await read_records(bootstrap, dlq, until=lambda rs: len(rs) >= 2)
            assert len(dead) == 2
            await eventually(accepted, what="the configured lead applied")
            assert await accepted() == {control_lead}

            listing = json.loads(
                ok(await lxctl(env, "dlq", "list", "lead.received", "--json")).stdout
            )
            by_origin = {(d["origin_partition"], d["origin_offset"]): d for d in listing}
            assert {d["status"] for d in listing} == {"pending"}
            assert {d["consumer_group"] for d in listing} == {f"{prefix}strict"}
            assert {d["origin_topic"] for d in listing} == {topic}
            letter = by_origin.pop(tuple(rejected_at))
            assert tuple(control_at) not in by_origin  # the configured lead was applied
            (poison,) = by_origin.values()
            assert "not configured" in letter["error"] and letter["failed_at"]
            plain = ok(await lxctl(env, "dlq", "list", "lead.received.dlq"))
            assert len(plain.stdout.splitlines()) == 3 and "\tpending\t" in plain.stdout

            shown = ok(await lxctl(env, "dlq", "show", "lead.received", str(letter["offset"])))
            assert f"header lx-dlq-origin-offset\t{rejected_at[1]}" in shown.stdout
            assert '"type": "LeadReceived"' in shown.stdout  # the value, pretty-printed
            raw = ok(await lxctl(env, "dlq", "show", "lead.received", str(poison["offset"])))
            assert raw.stdout.rstrip().endswith("{not json")

            # Garbage cannot be fixed by a retry: drop it, with a reason.
            ok(
                await lxctl(
                    env,
                    "dlq",
                    "drop",
                    "lead.received",
                    str(poison["offset"]),
                    "--reason",
                    "not JSON, from a broken test client",
                )
            )
            again = await lxctl(env, "dlq", "retry", "lead.received", str(poison["offset"]))
            assert again.exit_code == 2 and "already decided" in again.stderr

            # The fix: the campaign's configuration arrives; then the retry applies the event.
            async with db.begin() as conn:
                await conn.execute(
                    text("insert into configured_campaigns values (:c)"), {"c": new_campaign}
                )
            retried = ok(await lxctl(env, "dlq", "retry", "lead.received", "--all-pending"))
            assert "retried 1 dead letter(s)" in retried.stderr
            await eventually(lambda: _has(accepted, rejected_lead), what="the retried lead applied")

            records = await read_to_end(bootstrap, topic)
            (copy,) = [r for r in records if header(r, "lx-replayed-from")]
            assert header(copy, "lx-replayed-from") == f"{dlq}:0:{letter['offset']}"
            assert copy.key == str(rejected_lead).encode()  # the original record's key
            assert header(copy, "lx-event-type") == "LeadReceived"
            assert json.loads(copy.value)["event_id"] == str(rejected.event_id)

            # A forced second retry is a harmless duplicate: the event id is claimed now.
            ok(await lxctl(env, "dlq", "retry", "lead.received", str(letter["offset"]), "--force"))
            ends = await log_ends(bootstrap, topic)
            await wait_consumed(bootstrap, f"{prefix}strict", last_positions(topic, ends))
            assert await accepted() == {control_lead, rejected_lead}
            assert sum((await log_ends(bootstrap, dlq)).values()) == 2  # nothing new failed

        final = json.loads(ok(await lxctl(env, "dlq", "list", "lead.received", "--json")).stdout)
        statuses = {d["offset"]: (d["status"], d["actor"]) for d in final}
        assert statuses == {
            poison["offset"]: ("dropped", "test-sre"),
            letter["offset"]: ("retried", "test-sre"),
        }
        dropped = [d for d in final if d["status"] == "dropped"]
        assert dropped[0]["reason"] == "not JSON, from a broken test client"
        commands = [
            r["command"] for r in await audit_rows(sre_url) if r["command"].startswith("dlq")
        ]
        assert commands == ["dlq drop", "dlq retry", "dlq retry"]
    finally:
        await db.dispose()


async def _has(accepted: Any, lead: uuid.UUID) -> bool:
    return lead in await accepted()
