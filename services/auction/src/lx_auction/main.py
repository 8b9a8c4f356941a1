"""The auction's composition root."""

from fastapi import FastAPI
from lx_platform.egress import EgressPolicy, Resolver
from lx_platform.runtime import build_runtime, create_app
from lx_platform.secrets import ConfigKeys
from lx_schemas import topics
from lx_schemas.envelope import utcnow

from lx_auction import api, handlers
from lx_auction.auctioneer import Auctioneer, Clock
from lx_auction.settings import AuctionSettings


def create_service(
    settings: AuctionSettings | None = None,
    *,
    resolver: Resolver | None = None,
    clock: Clock = utcnow,
) -> FastAPI:
    """``resolver`` replaces the system's DNS for buyer endpoints, ``clock`` the wall
    clock of schedules and expiries (tests)."""
    settings = settings or AuctionSettings()
    rt = build_runtime("auction", settings, migrations=["lx_auction"])
    keys = ConfigKeys.parse(settings.platform.config_keys.get_secret_value())
    egress = EgressPolicy.from_settings(settings.platform, resolver)
    auctioneer = Auctioneer(rt.db, rt.outbox, rt.relay, settings, rt.metrics, egress, keys, clock)
    rt.extras.update(auctioneer=auctioneer)
    rt.consume(group_id="auction", topics=[topics.CONFIG_CHANGED], handler=handlers.handle)
    rt.on_start.append(auctioneer.start)
    rt.on_stop.append(auctioneer.stop)
    app = create_app(
        rt,
        title="LeadExchange auction",
        description="Ping-post auctions: pings eligible buyers in parallel, answers the best"
        " bid at once, and holds it for the post.",
    )
    app.include_router(api.internal)
    return app
