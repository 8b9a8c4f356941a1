from lx_platform.settings import ServiceSettings
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class DeliverySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LX_DELIVERY_", extra="ignore")

    database_url: str = "postgresql+psycopg://lx:lx@127.0.0.1:25432/lx_delivery"
    http_port: int = 8003
    # Deliveries in flight at once; a slow buyer occupies slots, not a partition.
    max_in_flight: int = Field(64, ge=1)
    # Tries of one offer for transport errors, 5xx and unknown outcomes (same delivery id).
    max_tries: int = Field(3, ge=1)
    retry_base_s: float = Field(0.5, gt=0)
    # How much of a request and of a buyer's response the log keeps.
    log_limit_bytes: int = Field(64 * 1024, ge=1024)
    poll_s: float = Field(0.5, gt=0)
