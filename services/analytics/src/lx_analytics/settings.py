from lx_platform.settings import ServiceSettings
from pydantic_settings import SettingsConfigDict


class AnalyticsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LX_ANALYTICS_", extra="ignore")

    database_url: str = "postgresql+psycopg://lx:lx@127.0.0.1:25432/lx_analytics"
    http_port: int = 8005
    consumer_group: str = "analytics"
