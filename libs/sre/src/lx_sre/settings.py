"""lxctl's settings: where Kafka, its audit database and the projections' databases are."""

from __future__ import annotations

import os

from lx_platform.settings import ServiceSettings
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class SreSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LX_SRE_", extra="ignore")

    # Audit records of every executed replay, rebuild and dead-letter decision.
    database_url: str = "postgresql+psycopg://lx:lx@127.0.0.1:25432/lx_sre"
    http_port: int = 0  # lxctl serves nothing
    # Who runs lxctl, for the audit log; read when the settings are built, not at import.
    actor: str = Field(default_factory=lambda: os.environ.get("USER", "unknown"))
