"""Analytics' composition root."""

from fastapi import FastAPI
from lx_platform.runtime import build_runtime, create_app
from lx_schemas import topics

from lx_analytics import api, handlers
from lx_analytics.settings import AnalyticsSettings


def create_service(settings: AnalyticsSettings | None = None) -> FastAPI:
    settings = settings or AnalyticsSettings()
    rt = build_runtime("analytics", settings, migrations=["lx_analytics"])
    rt.consume(
        group_id=settings.consumer_group,
        topics=[topics.LEAD_RECEIVED, topics.LEAD_ROUTED, topics.DELIVERY_OUTCOME],
        handler=handlers.project,
    )
    app = create_app(
        rt,
        title="LeadExchange analytics",
        description="Hourly lead counts and revenue, projected from the event log.",
    )
    app.include_router(api.router)
    return app
