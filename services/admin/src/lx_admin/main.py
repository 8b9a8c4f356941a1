"""Admin's composition root."""

from fastapi import FastAPI
from lx_platform.egress import EgressPolicy, Resolver
from lx_platform.runtime import build_runtime, create_app
from lx_platform.secrets import ConfigKeys
from lx_schemas import topics

from lx_admin import api, audit, returns, trace, users
from lx_admin.settings import AdminSettings


def create_service(
    settings: AdminSettings | None = None, *, resolver: Resolver | None = None
) -> FastAPI:
    """``resolver`` replaces the system's DNS for buyer endpoints (tests)."""
    settings = settings or AdminSettings()
    rt = build_runtime("admin", settings, migrations=["lx_admin"])
    egress = EgressPolicy.from_settings(settings.platform, resolver)
    rt.extras["egress"] = egress
    rt.extras["config_keys"] = ConfigKeys.parse(settings.platform.config_keys.get_secret_value())

    async def log_egress() -> None:
        egress.log_allow_list(settings.platform.environment)

    rt.on_start.append(log_egress)
    rt.consume(
        group_id="admin-trace",
        topics=[
            topics.LEAD_RECEIVED,
            topics.LEAD_PINGED,
            topics.LEAD_ROUTED,
            topics.DELIVERY_OUTCOME,
        ],
        handler=trace.record_trace,
    )
    rt.consume(
        group_id="admin-sales", topics=[topics.DELIVERY_OUTCOME], handler=returns.record_sales
    )
    rt.consume(group_id="admin-audit", topics=[topics.AUDIT_RECORDED], handler=audit.record_events)
    app = create_app(
        rt,
        title="LeadExchange admin API",
        description="Accounts, campaigns, sources, buyers, returns and the lead trace; users,"
        " their roles, sessions and API tokens; the audit log.",
    )
    app.include_router(users.router)
    app.include_router(api.router)
    app.include_router(returns.operator)
    app.include_router(returns.buyer)
    app.include_router(trace.router)
    app.include_router(audit.router)
    return app
