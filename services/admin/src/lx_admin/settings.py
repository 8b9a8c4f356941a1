from lx_platform.settings import ServiceSettings
from pydantic_settings import SettingsConfigDict


class AdminSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LX_ADMIN_", extra="ignore")

    database_url: str = "postgresql+psycopg://lx:lx@127.0.0.1:25432/lx_admin"
    http_port: int = 8000
    # Sign-in attempts per e-mail address (limits' notation; per process): a password or
    # a 6-digit TOTP code must not be guessable by trying fast.
    login_rate_limit: str = "5/minute;20/hour"
