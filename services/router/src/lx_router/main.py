"""Router's composition root."""

from fastapi import FastAPI
from lx_platform.leadkeys import LeadKeys
from lx_platform.runtime import build_runtime, create_app
from lx_schemas import topics

from lx_router.handlers import RouterHandler
from lx_router.settings import RouterSettings


def create_service(settings: RouterSettings | None = None) -> FastAPI:
    settings = settings or RouterSettings()
    rt = build_runtime("router", settings, migrations=["lx_router"])
    keys = LeadKeys(rt.internal_client(), settings.platform.ingest_url, settings.lead_key_ttl_s)
    handler = RouterHandler(rt.outbox, keys, settings.hash_key.get_secret_value().encode())
    rt.extras.update(keys=keys, handler=handler)
    rt.consume(
        group_id="router",
        topics=[
            topics.CONFIG_CHANGED,
            topics.BILLING_LIMITS,  # prepaid buyers out of funds are passed over
            topics.LEAD_RECEIVED,
            topics.DELIVERY_OUTCOME,
            topics.PRIVACY_ERASURES,  # erased leads' keyed hashes are deleted
        ],
        handler=handler,
    )
    return create_app(
        rt,
        title="LeadExchange router",
        description=(
            "Routes each lead to its campaign's buyers: screens them (filters, schedules,"
            " caps as reservations, duplicate windows, margin), orders them by the"
            " campaign's distribution and offers the lead until it is sold or no buyer is left."
        ),
    )
