from lx_platform.settings import ServiceSettings
from pydantic_settings import SettingsConfigDict


class BillingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LX_BILLING_", extra="ignore")

    database_url: str = "postgresql+psycopg://lx:lx@127.0.0.1:25432/lx_billing"
    http_port: int = 8004
    # A projection rebuild replays the log under a new group into a fresh database.
    consumer_group: str = "billing"
