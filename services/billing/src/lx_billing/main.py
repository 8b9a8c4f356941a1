"""Billing's composition root."""

from fastapi import FastAPI
from lx_platform.runtime import build_runtime, create_app
from lx_schemas import topics

from lx_billing import api, handlers
from lx_billing.settings import BillingSettings


def create_service(settings: BillingSettings | None = None) -> FastAPI:
    settings = settings or BillingSettings()
    rt = build_runtime("billing", settings, migrations=["lx_billing"])
    rt.consume(
        group_id=settings.consumer_group,
        topics=[topics.USAGE_INCREMENTED, topics.DELIVERY_OUTCOME],
        handler=handlers.project,
    )
    app = create_app(
        rt,
        title="LeadExchange billing",
        description="USD ledger and usage, projected from the event log.",
    )
    app.include_router(api.router)
    return app
