"""Router's composition root."""

from fastapi import FastAPI
from lx_platform.runtime import build_runtime, create_app
from lx_schemas import topics

from lx_router.handlers import RouterHandler
from lx_router.settings import RouterSettings


def create_service(settings: RouterSettings | None = None) -> FastAPI:
    settings = settings or RouterSettings()
    rt = build_runtime("router", settings, migrations=["lx_router"])
    rt.consume(
        group_id="router",
        topics=[topics.CONFIG_CHANGED, topics.LEAD_RECEIVED, topics.DELIVERY_OUTCOME],
        handler=RouterHandler(rt.outbox),
    )
    return create_app(
        rt,
        title="LeadExchange router",
        description="Routes each lead down its campaign's buyer waterfall.",
    )
