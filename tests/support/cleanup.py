"""What one test module created on the shared servers, removed when it ends."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import psycopg
from aiokafka.admin import AIOKafkaAdminClient
from lx_devstack.infra import Infra
from lx_devstack.postgres import libpq_dsn


def drop_test_state(infra: Infra, tag: str) -> None:
    """Drop the databases and delete the topics named after ``tag``.

    Without this every run leaves its topics behind, and a broker that has collected a
    few thousand partitions runs out of heap.
    """
    with psycopg.connect(libpq_dsn(infra.pg_admin_dsn), autocommit=True) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "select datname from pg_database where datname like %s", (f"{tag}%",)
            )
        ]
    for name in names:
        infra.drop_database(name)

    async def drop_topics() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap)
        await admin.start()
        try:
            topics = [t for t in await admin.list_topics() if t.startswith(tag)]
            if topics:
                await admin.delete_topics(topics)
        finally:
            await admin.close()

    # Its own thread and loop: callers may be inside pytest-asyncio's loop.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, drop_topics()).result()
