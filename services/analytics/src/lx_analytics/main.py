"""Analytics' composition root."""

from fastapi import FastAPI
from lx_platform.runtime import build_runtime, create_app
from lx_schemas import topics

from lx_analytics import api, handlers
from lx_analytics.exports import ExportScheduler
from lx_analytics.settings import AnalyticsSettings

# What the projection reads (lx_sre's rebuild registry reads the same list).
TOPICS = (
    topics.LEAD_RECEIVED,
    topics.LEAD_PINGED,
    topics.LEAD_ROUTED,
    topics.DELIVERY_OUTCOME,
    topics.EXPORT_CONFIGURED,
    # Each campaign's account, so a tenant's reports hold its own campaigns only.
    topics.CONFIG_CHANGED,
)


def create_service(settings: AnalyticsSettings | None = None) -> FastAPI:
    settings = settings or AnalyticsSettings()
    rt = build_runtime("analytics", settings, migrations=["lx_analytics"])
    rt.consume(group_id=settings.consumer_group, topics=TOPICS, handler=handlers.project)
    scheduler = ExportScheduler(rt.db, settings.export_folder, poll_s=settings.export_poll_s)
    rt.extras["exports"] = scheduler
    if settings.exports_enabled:
        rt.on_start.append(scheduler.start)
        rt.on_stop.append(scheduler.stop)
    app = create_app(
        rt,
        title="LeadExchange analytics",
        description="Reports by hour and day by campaign, source and buyer, and scheduled CSV"
        " exports, projected from the event log.",
    )
    app.include_router(api.router)
    return app
