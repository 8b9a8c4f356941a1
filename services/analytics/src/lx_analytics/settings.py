from pathlib import Path

from lx_platform.settings import ServiceSettings
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class AnalyticsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LX_ANALYTICS_", extra="ignore")

    database_url: str = "postgresql+psycopg://lx:lx@127.0.0.1:25432/lx_analytics"
    http_port: int = 8005
    # A projection rebuild may replay the log under a new group into a fresh database.
    consumer_group: str = "analytics"
    # Scheduled exports: where their CSV files go, how often the scheduler looks.
    export_folder: Path = Path("var/exports")
    export_poll_s: float = Field(default=60.0, gt=0)
    exports_enabled: bool = True
