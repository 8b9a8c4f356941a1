"""Reading and writing the platform's topics from tests (real Kafka)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from lx_platform.kafka import encode_key
from lx_schemas import Event, decode_event, topic_for

Position = tuple[str, int, int]  # topic, partition, offset


async def publish(
    bootstrap: str, prefix: str, events: Iterable[tuple[Event, uuid.UUID | str]]
) -> list[Position]:
    """Publish in order, each to its event type's topic; returns where each one landed."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        positions = []
        for event, key in events:
            meta = await producer.send_and_wait(
                topic_for(type(event)).qualified(prefix),
                event.to_json(),
                key=encode_key(key),
                headers=[(k, v.encode()) for k, v in event.headers().items()],
            )
            positions.append((meta.topic, meta.partition, meta.offset))
        return positions
    finally:
        await producer.stop()


async def publish_raw(bootstrap: str, topic: str, value: bytes, key: bytes | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def read_records(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[ConsumerRecord[Any, Any]]], bool],
    timeout: float = 20.0,  # noqa: ASYNC109 - a polling deadline, not a cancellation scope
) -> list[ConsumerRecord[Any, Any]]:
    """Every record of ``topic`` from the beginning, until ``until(records)`` or timeout."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = [p["partition"] for p in described["partitions"]]
    assert partitions, f"topic {topic} has no partitions"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    records: list[ConsumerRecord[Any, Any]] = []
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        while not until(records) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                records.extend(part)
        return records
    finally:
        await consumer.stop()


async def read_events(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[Event]], bool],
    timeout: float = 20.0,  # noqa: ASYNC109
) -> list[Event]:
    """Decoded events of ``topic`` from the beginning, until ``until(events)`` or timeout."""

    def done(records: list[ConsumerRecord[Any, Any]]) -> bool:
        return until([decode_event(r.value) for r in records])

    return [
        decode_event(r.value)
        for r in await read_records(bootstrap, topic, until=done, timeout=timeout)
    ]


def of_type(events: Iterable[Event], cls: type[Event]) -> list[Any]:
    return [e for e in events if isinstance(e, cls)]


async def read_to_end(bootstrap: str, topic: str) -> list[ConsumerRecord[Any, Any]]:
    """Every record of ``topic`` up to its end as of now, from every partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        tps = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
        ends = {tp.partition: end for tp, end in (await reader.end_offsets(tps)).items()}
    finally:
        await reader.stop()

    def complete(records: list[ConsumerRecord[Any, Any]]) -> bool:
        last: dict[int, int] = {}
        for r in records:
            last[r.partition] = max(last.get(r.partition, -1), r.offset)
        return all(last.get(p, -1) >= end - 1 for p, end in ends.items())

    records = await read_records(bootstrap, topic, until=complete)
    assert complete(records), f"could not read {topic} to its end"
    return records
