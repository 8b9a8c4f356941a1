"""The shared consumer against real Kafka and PostgreSQL: effects happen exactly once,
poison goes to the dead-letter topic with its origin, transient failures are retried."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import psycopg
from lx_devstack.infra import Infra
from lx_platform.consumer import Consumed
from lx_platform.kafka import ensure_topics
from lx_platform.runtime import build_runtime, start_runtime, stop_runtime
from lx_platform.settings import ServiceSettings
from lx_schemas import events as ev
from lx_schemas.topics import USAGE_INCREMENTED
from pydantic_settings import SettingsConfigDict
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.support.kafka import publish, publish_raw, read_records
from tests.support.services import eventually, settings_for

ACCOUNT = uuid.uuid4()
POISON, FLAKY = uuid.UUID(int=666), uuid.UUID(int=777)


class ProbeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LX_PROBE_", extra="ignore")
    http_port: int = 0


def usage(subject: uuid.UUID) -> ev.UsageIncremented:
    return ev.UsageIncremented.new(
        account_id=ACCOUNT,
        correlation_id=subject,
        producer="test",
        payload=ev.UsageIncrementedPayload(
            metric=ev.UsageMetric.LEADS_RECEIVED, subject_id=subject
        ),
    )


class Probe:
    """A handler with an effect per event, one poison event and one flaky one."""

    def __init__(self) -> None:
        self.flaky_failures = 0
        self.poison_fixed = False

    async def __call__(self, conn: AsyncConnection, batch: Sequence[Consumed]) -> None:
        for item in batch:
            assert isinstance(item.event, ev.UsageIncremented)
            subject = item.event.payload.subject_id
            if subject == POISON and not self.poison_fixed:
                raise ValueError("this event breaks the handler")
            if subject == FLAKY and self.flaky_failures == 0:
                self.flaky_failures += 1
                raise psycopg.OperationalError("database went away for a moment")
            await conn.execute(
                text("insert into effects (event_id) values (:e)"), {"e": item.event.event_id}
            )


async def _effects(rt_db: object) -> list[uuid.UUID]:
    async with rt_db.begin() as conn:  # type: ignore[attr-defined]
        return list(await conn.scalars(text("select event_id from effects order by event_id")))


async def test_each_effect_happens_once_and_poison_is_dead_lettered(
    infra: Infra, isolation: str
) -> None:
    settings = settings_for(ProbeSettings, infra, isolation, "probe")
    topic = USAGE_INCREMENTED.qualified(settings.kafka.topic_prefix)
    probe = Probe()

    def runtime() -> object:
        rt = build_runtime("probe", settings, migrations=[])
        rt.consume(group_id="probe", topics=[USAGE_INCREMENTED], handler=probe)
        return rt

    rt = runtime()
    await start_runtime(rt)  # type: ignore[arg-type]
    async with rt.db.begin() as conn:  # type: ignore[attr-defined]
        await conn.exec_driver_sql("create table if not exists effects (event_id uuid not null)")
    good = [usage(uuid.uuid4()) for _ in range(3)]
    poison, flaky = usage(POISON), usage(FLAKY)
    await publish(
        infra.kafka_bootstrap,
        settings.kafka.topic_prefix,
        [(good[0], ACCOUNT), (good[1], ACCOUNT), (good[0], ACCOUNT)],
    )
    await publish_raw(infra.kafka_bootstrap, topic, b"\x00 not an event", key=b"junk")
    await publish(
        infra.kafka_bootstrap,
        settings.kafka.topic_prefix,
        [(poison, ACCOUNT), (flaky, ACCOUNT), (good[2], ACCOUNT)],
    )

    expected = sorted([good[0].event_id, good[1].event_id, good[2].event_id, flaky.event_id])

    async def all_applied() -> bool:
        return await _effects(rt.db) == expected  # type: ignore[attr-defined]

    await eventually(all_applied, within=30, what="all_applied")
    dead = await read_records(infra.kafka_bootstrap, f"{topic}.dlq", until=lambda r: len(r) >= 2)
    assert len(dead) == 2
    headers = [{k: v.decode() for k, v in r.headers} for r in dead]
    assert {h["lx-dlq-origin-topic"] for h in headers} == {topic}
    assert all(h["lx-dlq-consumer-group"] == f"{isolation}.probe" for h in headers)
    assert any("breaks the handler" in h["lx-dlq-error"] for h in headers)
    assert {r.value for r in dead} == {b"\x00 not an event", poison.to_json()}
    assert probe.flaky_failures == 1  # failed once, retried, applied once

    # The metrics say the same: seven records, the copy of good[0] a duplicate (the flaky
    # event's retry re-finding its own batch's work is not), two dead letters.
    group = f"{isolation}.probe"

    def count(name: str) -> float | None:
        registry = rt.metrics.registry  # type: ignore[attr-defined]
        value: float | None = registry.get_sample_value(name, {"group": group, "topic": topic})
        return value

    async def all_counted() -> bool:
        return count("lx_events_consumed_total") == 7

    await eventually(all_counted, within=30, what="all_counted")
    assert count("lx_events_duplicate_total") == 1
    assert count("lx_events_dead_lettered_total") == 2

    # A restart re-reads nothing it committed, and a re-published event changes nothing.
    await stop_runtime(rt)  # type: ignore[arg-type]
    rt = runtime()
    await start_runtime(rt)  # type: ignore[arg-type]
    marker = usage(uuid.uuid4())
    await publish(
        infra.kafka_bootstrap, settings.kafka.topic_prefix, [(good[1], ACCOUNT), (marker, ACCOUNT)]
    )
    expected = sorted([*expected, marker.event_id])
    await eventually(all_applied, within=30, what="all_applied")
    await asyncio.sleep(1.0)
    assert await _effects(rt.db) == expected  # type: ignore[attr-defined]

    # After the fix, re-publishing the dead-lettered event applies it (its id was never
    # claimed); the dead-letter table remembers where it failed.
    probe.poison_fixed = True
    await publish(infra.kafka_bootstrap, settings.kafka.topic_prefix, [(poison, ACCOUNT)])
    expected = sorted([*expected, poison.event_id])
    await eventually(all_applied, within=30, what="all_applied")
    async with rt.db.begin() as conn:  # type: ignore[attr-defined]
        rows = (
            await conn.execute(text('select event_id from dead_letters order by "offset"'))
        ).all()
    assert sorted(str(r.event_id) for r in rows) == sorted(["None", str(poison.event_id)])
    await stop_runtime(rt)  # type: ignore[arg-type]


async def test_a_batch_retried_after_a_transient_failure_counts_each_record_once(
    infra: Infra, isolation: str
) -> None:
    settings = settings_for(ProbeSettings, infra, f"{isolation}b", "probe")
    prefix = settings.kafka.topic_prefix
    topic = USAGE_INCREMENTED.qualified(prefix)
    group = f"{prefix}probe"
    good, poison, flaky = usage(uuid.uuid4()), usage(POISON), usage(FLAKY)
    # Published before the consumer starts, so that its first fetch is one batch of all:
    # the poison sends it down the one-by-one path, where the flaky event's transient
    # failure retries the whole batch, which then finds its own earlier work recorded.
    await ensure_topics(settings.kafka, [USAGE_INCREMENTED])
    await publish(
        infra.kafka_bootstrap,
        prefix,
        [(good, ACCOUNT), (good, ACCOUNT), (poison, ACCOUNT), (flaky, ACCOUNT)],
    )
    probe = Probe()
    rt = build_runtime("probe", settings, migrations=[])
    rt.consume(group_id="probe", topics=[USAGE_INCREMENTED], handler=probe)
    async with rt.db.begin() as conn:
        await conn.exec_driver_sql("create table if not exists effects (event_id uuid not null)")
    await start_runtime(rt)

    def count(name: str, **labels: str) -> float | None:
        return rt.metrics.registry.get_sample_value(name, {"group": group, **labels})

    async def batch_done() -> bool:
        return count("lx_handler_seconds_count") == 1

    try:
        await eventually(batch_done, within=30, what="batch_done")
        assert probe.flaky_failures == 1
        assert await _effects(rt.db) == sorted([good.event_id, flaky.event_id])
        assert count("lx_events_consumed_total", topic=topic) == 4
        assert count("lx_events_duplicate_total", topic=topic) == 1  # the copy of good
        assert count("lx_events_dead_lettered_total", topic=topic) == 1  # the poison
    finally:
        await stop_runtime(rt)
