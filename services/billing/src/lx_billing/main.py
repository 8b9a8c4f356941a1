"""Billing's composition root."""

from fastapi import FastAPI
from lx_platform.runtime import build_runtime, create_app
from lx_schemas import topics

from lx_billing import api, commands, handlers
from lx_billing.settings import BillingSettings

# What billing projects (lxctl's rebuild replays the same).
TOPICS = (topics.USAGE_INCREMENTED, topics.DELIVERY_OUTCOME, topics.BILLING_OPERATIONS)


def create_service(settings: BillingSettings | None = None) -> FastAPI:
    settings = settings or BillingSettings()
    rt = build_runtime("billing", settings, migrations=["lx_billing"])
    rt.consume(
        group_id=settings.consumer_group,
        topics=TOPICS,
        handler=handlers.Projector(rt.outbox),
    )
    app = create_app(
        rt,
        title="LeadExchange billing",
        description="USD ledger, usage, plans, prepaid funds and invoices, projected from the"
        " event log; operators' billing commands, published as events.",
    )
    app.include_router(api.router)
    app.include_router(commands.router)
    return app
