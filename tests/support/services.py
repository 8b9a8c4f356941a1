"""Running one service in-process against real Kafka and PostgreSQL."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from lx_devstack.infra import Infra
from lx_platform.runtime import Runtime
from lx_platform.settings import KafkaSettings, ServiceSettings

S = TypeVar("S", bound=ServiceSettings)
OPERATOR = {"authorization": "Bearer dev-operator-token"}


def settings_for(cls: type[S], infra: Infra, tag: str, service: str, **extra: Any) -> S:
    """Settings for a service in this test module: its own database and topic prefix."""
    database = f"{tag}_{service}"
    infra.create_database(database)
    return cls(
        database_url=infra.dsn(database),
        kafka=KafkaSettings(bootstrap_servers=infra.kafka_bootstrap, topic_prefix=f"{tag}."),
        **extra,
    )


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    """Start the service's lifespan (migrations, topics, consumers) and talk to it."""
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            yield client, app.state.runtime
