import base64
import os

import pytest
from lx_ingest.settings import IngestSettings
from lx_platform.settings import PlatformSettings


def _real_config_key() -> str:
    return "prod1:" + base64.b64encode(os.urandom(32)).decode()


def test_plain_postgres_dsns_get_the_psycopg_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LX_INGEST_DATABASE_URL", "postgresql://u:p@db:5432/lx_ingest")
    assert IngestSettings().database_url == "postgresql+psycopg://u:p@db:5432/lx_ingest"


def test_a_non_postgres_dsn_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LX_INGEST_DATABASE_URL", "sqlite:///x.db")
    with pytest.raises(ValueError, match="PostgreSQL"):
        IngestSettings()


def test_production_refuses_placeholder_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LX_PLATFORM_CONFIG_KEYS")
    monkeypatch.setenv("LX_PLATFORM_ENVIRONMENT", "production")
    with pytest.raises(ValueError, match="INTERNAL_TOKEN"):
        PlatformSettings()
    monkeypatch.setenv("LX_PLATFORM_INTERNAL_TOKEN", "a-real-long-secret-1")
    monkeypatch.setenv("LX_PLATFORM_OPERATOR_TOKEN", "a-real-long-secret-2")
    with pytest.raises(ValueError, match="CONFIG_KEYS"):
        PlatformSettings()
    monkeypatch.setenv("LX_PLATFORM_CONFIG_KEYS", _real_config_key())
    PlatformSettings()
    with pytest.raises(ValueError, match="HASH_KEY"):
        IngestSettings()
    monkeypatch.setenv("LX_INGEST_HASH_KEY", "a-real-hash-key-of-at-least-32-bytes")
    with pytest.raises(ValueError, match="development key"):
        IngestSettings().keks()
