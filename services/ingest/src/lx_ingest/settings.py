import base64

from lx_platform.settings import ServiceSettings
from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

# Development-only key-encryption key; production refuses it.
DEV_KEK = base64.b64encode(b"lx-development-kek-not-a-secret!").decode()


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LX_INGEST_", extra="ignore")

    database_url: str = "postgresql+psycopg://lx:lx@127.0.0.1:55432/lx_ingest"
    http_port: int = 8001
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    # Key-encryption keys of the PII vault, "id:base64key" comma-separated; the first wraps.
    vault_keks: SecretStr = SecretStr(f"dev1:{DEV_KEK}")

    def keks(self) -> tuple[dict[str, bytes], str]:
        pairs = [p.split(":", 1) for p in self.vault_keks.get_secret_value().split(",") if p]
        keys = {kid.strip(): base64.b64decode(b64) for kid, b64 in pairs}
        if self.platform.environment == "production" and base64.b64decode(DEV_KEK) in keys.values():
            raise ValueError("LX_INGEST_VAULT_KEKS must not use the development key in production")
        return keys, pairs[0][0].strip()
