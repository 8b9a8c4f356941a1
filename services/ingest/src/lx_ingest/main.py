"""Ingest's composition root."""

from collections.abc import Sequence

from fastapi import FastAPI
from lx_platform.consumer import Consumed
from lx_platform.crypto import KeyWrapper
from lx_platform.runtime import build_runtime, create_app
from lx_schemas import topics
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_ingest import api, handlers, pings, privacy, store
from lx_ingest.ratelimit import SourceRateLimiter
from lx_ingest.retention import Pruner
from lx_ingest.settings import IngestSettings
from lx_ingest.sources import SourceCache


def create_service(settings: IngestSettings | None = None) -> FastAPI:
    settings = settings or IngestSettings()
    rt = build_runtime("ingest", settings, migrations=["lx_ingest"])
    rt.extras["vault"] = store.KeyVault(KeyWrapper(*settings.keks()))
    rt.extras["limiter"] = SourceRateLimiter()  # in memory, per replica (see ratelimit)
    pruner = Pruner(rt.db, settings, rt.outbox)
    rt.on_start.append(pruner.start)
    rt.on_stop.append(pruner.stop)
    sources = rt.extras["sources"] = SourceCache()

    async def handle(conn: AsyncConnection, batch: Sequence[Consumed]) -> None:
        sources.saw(batch)
        await handlers.handle(conn, batch)

    rt.consume(
        group_id="ingest",
        topics=[topics.CONFIG_CHANGED, topics.DELIVERY_OUTCOME, topics.BILLING_LIMITS],
        handler=handle,
        after_commit=sources.committed,
    )
    app = create_app(
        rt,
        title="LeadExchange ingest API",
        description="Traffic sources post leads here with their API key.",
    )
    app.include_router(api.router)
    app.include_router(pings.router)
    app.include_router(privacy.router)
    app.include_router(api.internal)
    return app
