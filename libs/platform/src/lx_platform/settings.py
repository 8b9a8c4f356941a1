"""Settings shared by every service; each service subclasses ``ServiceSettings``.

Shared parts read ``LX_KAFKA_*``, ``LX_LOG_*`` and ``LX_PLATFORM_*``; a service's own
part reads ``LX_<SERVICE>_*`` (e.g. ``LX_INGEST_DATABASE_URL``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Environment = Literal["development", "test", "production"]
_PLACEHOLDERS = {"", "changeme", "dev-internal-token", "secret"}


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LX_KAFKA_", extra="ignore")

    bootstrap_servers: str = "127.0.0.1:19092"
    # Lets tests and several environments share one cluster without sharing topics.
    topic_prefix: str = ""
    create_topics: bool = True
    replication_factor: int = Field(1, ge=1)
    # Low waits keep each hop's latency in milliseconds, not in half seconds.
    fetch_max_wait_ms: int = Field(50, ge=1)
    batch_timeout_ms: int = Field(50, ge=1)
    max_batch_records: int = Field(500, ge=1)
    linger_ms: int = Field(2, ge=0)


class LogSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LX_LOG_", extra="ignore")

    level: str = "INFO"
    json_output: bool = Field(True, validation_alias="LX_LOG_JSON")


class PlatformSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LX_PLATFORM_", extra="ignore")

    environment: Environment = "development"
    # Shared secret for service-to-service HTTP calls (key vault, lead trace details).
    internal_token: SecretStr = SecretStr("dev-internal-token")
    # Bearer token of the operator APIs (admin, billing, analytics) until real users land.
    operator_token: SecretStr = SecretStr("dev-operator-token")
    ingest_url: str = "http://127.0.0.1:8001"
    delivery_url: str = "http://127.0.0.1:8003"
    internal_timeout_s: float = 2.0

    @model_validator(mode="after")
    def _refuse_placeholders_in_production(self) -> PlatformSettings:
        if self.environment == "production":
            for name in ("internal_token", "operator_token"):
                if getattr(self, name).get_secret_value() in _PLACEHOLDERS | {"dev-operator-token"}:
                    raise ValueError(f"LX_PLATFORM_{name.upper()} must be set to a real secret")
        return self


class ServiceSettings(BaseSettings):
    """Base of each service's settings; subclasses set ``env_prefix`` and defaults."""

    model_config = SettingsConfigDict(extra="ignore")

    database_url: str
    http_host: str = "127.0.0.1"
    http_port: int
    db_pool_size: int = Field(10, ge=1)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    platform: PlatformSettings = Field(default_factory=PlatformSettings)

    @field_validator("database_url")
    @classmethod
    def _psycopg_driver(cls, url: str) -> str:
        """Accept plain ``postgresql://`` DSNs; the code runs on psycopg 3."""
        for plain in ("postgresql://", "postgres://"):
            if url.startswith(plain):
                return "postgresql+psycopg://" + url[len(plain) :]
        if not url.startswith("postgresql+psycopg://"):
            raise ValueError("database_url must be a PostgreSQL DSN (postgresql+psycopg://)")
        return url
