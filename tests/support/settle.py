"""Helpers for the router and delivery tests: publish events and learn where they landed,
wait (bounded) until a service has consumed them and relayed what it decided, and read a
topic to its current end, so that "nothing more happened" can be asserted exactly."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from lx_platform.runtime import Runtime
from lx_schemas.envelope import Event, decode_event

from tests.support.kafka import Position, publish
from tests.support.services import eventually

__all__ = ["Position", "publish"]


async def wait_consumed(bootstrap: str, group: str, positions: list[Position]) -> None:
    """Until ``group`` committed past every position. The platform's consumer commits an
    offset only after the database transaction of its batch (outbox rows included)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:

        async def committed() -> bool:
            offsets = await admin.list_consumer_group_offsets(group)
            return all(
                (c := offsets.get(TopicPartition(t, p))) is not None and c.offset > o
                for t, p, o in positions
            )

        await eventually(committed, what=f"{group} consumed {positions}")
    finally:
        await admin.close()


async def wait_relayed(rt: Runtime) -> None:
    """Until the service's outbox is empty: what it staged is acknowledged by Kafka."""

    async def empty() -> bool:
        return await rt.relay.backlog() == 0

    await eventually(empty, what=f"{rt.name}'s outbox relayed")


async def read_all(bootstrap: str, topic: str) -> list[Event]:
    """Every event of ``topic`` from its beginning up to its end as of this call."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    tps = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
    assert tps, f"topic {topic} has no partitions"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        events: list[Event] = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in tps])

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20.0
        while await behind():
            if loop.time() > deadline:
                raise TimeoutError(f"could not read {topic} to its end")
            batch = await consumer.getmany(*tps, timeout_ms=200)
            for records in batch.values():
                events.extend(decode_event(r.value) for r in records)
        return events
    finally:
        await consumer.stop()


def republished(event: Event) -> Event:
    """The same fact under a new event id (a replay, or a producer's retry)."""
    return event.model_copy(update={"event_id": uuid.uuid4()})


async def caught_up(bootstrap: str, rt: Runtime) -> bool:
    """Has each consumer group of ``rt`` committed up to the end of every partition?"""
    for consumer in rt.consumers:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            committed = await admin.list_consumer_group_offsets(consumer.group_id)
            described = await admin.describe_topics(consumer.topics)
        finally:
            await admin.close()
        tps = [
            TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]
        ]
        reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await reader.start()
        try:
            ends = await reader.end_offsets(tps)
        finally:
            await reader.stop()
        for tp, end in ends.items():
            if end and (tp not in committed or committed[tp].offset < end):
                return False
    return True
