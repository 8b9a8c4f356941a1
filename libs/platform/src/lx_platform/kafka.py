"""Kafka plumbing: the broker (idempotent producer, acks=all), topics, publishing."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from faststream.kafka import KafkaBroker
from lx_schemas.envelope import Event
from lx_schemas.topics import ALL_TOPICS, DEAD_LETTER_PARTITIONS, KEEP_FOREVER, TopicSpec, topic_for

from lx_platform.logging import get_logger
from lx_platform.metrics import Metrics
from lx_platform.settings import KafkaSettings

log = get_logger(__name__)


def make_broker(settings: KafkaSettings, *, client_id: str) -> KafkaBroker:
    """A broker whose producer is idempotent with acks=all (aiokafka defaults to acks=1)."""
    return KafkaBroker(
        settings.bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=settings.linger_ms,
        request_timeout_ms=30_000,
        graceful_timeout=30.0,
        logger=None,  # handlers log through structlog with the lead id bound
    )


def dead_letter_topic(topic: str) -> str:
    """``lead.received`` -> ``lead.received.dlq`` (keeps any topic prefix)."""
    return f"{topic}.dlq"


async def ensure_topics(
    settings: KafkaSettings, specs: Sequence[TopicSpec] = ALL_TOPICS
) -> list[str]:
    """Create the platform's topics and their dead-letter topics if missing."""
    wanted = []
    for spec in specs:
        name = spec.qualified(settings.topic_prefix)
        wanted.append(
            NewTopic(name, spec.partitions, settings.replication_factor, topic_configs=spec.config)
        )
        wanted.append(
            NewTopic(
                dead_letter_topic(name),
                DEAD_LETTER_PARTITIONS,
                settings.replication_factor,
                topic_configs=dict(KEEP_FOREVER),
            )
        )
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t.name not in existing]
        if not missing:
            return []
        try:
            response = await admin.create_topics(missing)
        except TopicAlreadyExistsError:
            return []  # another service created them first
        # The broker answers per topic; a refusal there raises nothing by itself.
        failed = [
            (topic, code, message)
            for topic, code, *rest in response.topic_errors
            for message in [rest[0] if rest else ""]
            if code not in (0, TopicAlreadyExistsError.errno)
        ]
        if failed:
            raise RuntimeError(f"Kafka refused to create topics: {failed}")
        log.info("topics_created", topics=[t.name for t in missing])
        return [t.name for t in missing]
    finally:
        await admin.close()


def encode_key(key: uuid.UUID | str) -> bytes:
    return str(key).encode()


class EventPublisher:
    """Publishes events to their topics, waiting for the broker's acknowledgement."""

    def __init__(self, broker: KafkaBroker, topic_prefix: str = "", *, metrics: Metrics) -> None:
        self.broker = broker
        self.prefix = topic_prefix
        self.metrics = metrics

    def topic(self, event: Event) -> str:
        return topic_for(type(event)).qualified(self.prefix)

    async def publish(self, event: Event, key: uuid.UUID | str) -> None:
        topic = self.topic(event)
        await self.broker.publish(
            event.to_json(), topic, key=encode_key(key), headers=event.headers()
        )
        self.metrics.events_produced.labels(topic).inc()

    async def publish_all(self, items: Iterable[tuple[Event, uuid.UUID | str]]) -> None:
        """Send all at once and wait for every acknowledgement (one round trip, not N)."""
        await self.publish_raw(
            (self.topic(e), encode_key(k), e.headers(), e.to_json()) for e, k in items
        )

    async def publish_raw(
        self, records: Iterable[tuple[str, bytes | None, dict[str, str], bytes]]
    ) -> None:
        futures: list[Any] = []
        topics: Counter[str] = Counter()
        for topic, key, headers, value in records:
            futures.append(
                await self.broker.publish(value, topic, key=key, headers=headers, no_confirm=True)
            )
            topics[topic] += 1
        if futures:
            await asyncio.gather(*futures)
        # Counted once Kafka acknowledged every record (acks=all).
        for topic, n in topics.items():
            self.metrics.events_produced.labels(topic).inc(n)
