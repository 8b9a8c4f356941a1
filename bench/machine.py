"""The machine's own limits, measured in the same run as the platform's figures.

- a raw aiokafka producer (acks=all, idempotent, as the services produce) and consumer,
  on messages the size of a ``LeadReceived``;
- a raw PostgreSQL ``COPY`` of rows shaped like a projection's;
- the web stack alone (``bench.bare_http``: uvicorn + FastAPI + pydantic, nothing
  behind it), driven by the same load generator as ingest.

Every platform figure in the bench report is printed next to these, as a ratio.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from lx_devstack.infra import Infra

MESSAGE_BYTES = 900  # about one LeadReceived with sealed PII


async def kafka_limits(infra: Infra, messages: int) -> dict[str, float]:
    topic = f"bench-raw-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=12, replication_factor=1)])
        await asyncio.sleep(2)  # leaders elected before the clock starts
        payload = os.urandom(MESSAGE_BYTES // 2).hex().encode()[:MESSAGE_BYTES]
        producer = AIOKafkaProducer(
            bootstrap_servers=infra.kafka_bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=2,
        )
        await producer.start()
        started = time.perf_counter()
        try:
            for start in range(0, messages, 2_000):
                futures = [
                    await producer.send(topic, payload, key=uuid.uuid4().bytes)
                    for _ in range(min(2_000, messages - start))
                ]
                await asyncio.gather(*futures)
        finally:
            await producer.stop()
        produce_s = time.perf_counter() - started

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=infra.kafka_bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await consumer.start()
        seen = 0
        started = time.perf_counter()
        try:
            while seen < messages:
                batch = await consumer.getmany(timeout_ms=1_000, max_records=5_000)
                seen += sum(len(records) for records in batch.values())
        finally:
            await consumer.stop()
        consume_s = time.perf_counter() - started
    finally:
        await admin.delete_topics([topic])
        await admin.close()
    return {
        "kafka_produce_msgs_per_s": messages / produce_s,
        "kafka_consume_msgs_per_s": messages / consume_s,
        "kafka_messages": float(messages),
        "kafka_message_bytes": float(MESSAGE_BYTES),
    }


def copy_limit(infra: Infra, rows: int) -> dict[str, float]:
    """COPY of rows shaped like billing's ledger entries into a plain (logged) table,
    as the projections write."""
    database = f"bench_raw_{uuid.uuid4().hex[:8]}"
    infra.create_database(database)
    dsn = infra.dsn(database).replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "create table entries (txn_id uuid, account_id uuid, lead_id uuid,"
                " amount numeric(14,2), occurred_at timestamptz, kind text)"
            )
            account = uuid.uuid4()
            started = time.perf_counter()
            with conn.cursor() as cur, cur.copy("copy entries from stdin") as copy:
                for n in range(rows):
                    copy.write_row(
                        (uuid.uuid4(), account, uuid.uuid4(), f"{n % 97}.50", "2026-11-01", "sale")
                    )
            elapsed = time.perf_counter() - started
    finally:
        infra.drop_database(database)
    return {"pg_copy_rows_per_s": rows / elapsed, "pg_copy_rows": float(rows)}


async def http_limit(
    port: int, drive: Callable[[str, float], Awaitable[tuple[int, float]]], seconds: float
) -> dict[str, float]:
    """Requests per second the bare web stack answers ``202`` to, closed loop: what a
    Python HTTP service can take on this machine before doing any work."""
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.bare_http", str(port)
    )
    try:
        url = f"http://127.0.0.1:{port}/v1/leads"
        deadline = time.monotonic() + 20
        while True:  # until it listens
            try:
                await drive(url, 0.2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        answered, elapsed = await drive(url, seconds)
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 10)
    return {"bare_http_202_per_s": answered / elapsed}
