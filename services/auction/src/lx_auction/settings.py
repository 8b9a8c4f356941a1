from lx_platform.settings import ServiceSettings
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class AuctionSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LX_AUCTION_", extra="ignore")

    database_url: str = "postgresql+psycopg://lx:lx@127.0.0.1:25432/lx_auction"
    http_port: int = 8006
    # Connections kept to buyers' ping endpoints (pings of many auctions at once).
    max_connections: int = Field(256, ge=1)
    # The most of a buyer's answer to a ping that is read; a larger answer is an error.
    max_response_bytes: int = Field(64 * 1024, ge=1024)
    # A duplicate request for an auction still running waits this long past its
    # deadline; a row left running longer (its process died) is taken over and rerun.
    abandoned_after_s: float = Field(10.0, gt=0)
