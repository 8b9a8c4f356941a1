"""Delivery's composition root."""

from fastapi import FastAPI
from lx_platform.egress import EgressPolicy, Resolver
from lx_platform.leadkeys import LeadKeys
from lx_platform.runtime import build_runtime, create_app
from lx_platform.secrets import ConfigKeys
from lx_schemas import topics

from lx_delivery import api
from lx_delivery.handlers import DeliveryHandler
from lx_delivery.settings import DeliverySettings
from lx_delivery.worker import DeliveryWorker


def create_service(
    settings: DeliverySettings | None = None, *, resolver: Resolver | None = None
) -> FastAPI:
    """``resolver`` replaces the system's DNS for buyer endpoints (tests)."""
    settings = settings or DeliverySettings()
    rt = build_runtime("delivery", settings, migrations=["lx_delivery"])
    keys = LeadKeys(rt.internal_client(), settings.platform.ingest_url)
    egress = EgressPolicy.from_settings(settings.platform, resolver)
    config_keys = ConfigKeys.parse(settings.platform.config_keys.get_secret_value())
    worker = DeliveryWorker(
        rt.db, rt.outbox, rt.relay, keys, settings, rt.metrics, egress, config_keys
    )
    rt.extras.update(keys=keys, worker=worker)
    rt.consume(
        group_id="delivery",
        topics=[topics.CONFIG_CHANGED, topics.LEAD_ROUTED],
        handler=DeliveryHandler(rt.outbox),
        after_commit=worker.wake,
    )
    rt.on_start.append(worker.start)
    rt.on_stop.append(worker.stop)
    app = create_app(
        rt,
        title="LeadExchange delivery",
        description="Posts leads to buyers and keeps every request and response.",
    )
    app.include_router(api.internal)
    return app
