from lx_platform.settings import ServiceSettings
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

# Development-only key of the per-buyer duplicate index; production refuses it.
DEV_HASH_KEY = "lx-development-router-hash-key-not-a-secret"


class RouterSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LX_ROUTER_", extra="ignore")

    database_url: str = "postgresql+psycopg://lx:lx@127.0.0.1:25432/lx_router"
    http_port: int = 8002
    # HMAC-SHA256 key of the per-buyer duplicate index (buyer_consumers): it holds keyed
    # hashes of normalised e-mails and phones, never the values. Changing it forgets the
    # index (consumers offered before no longer match).
    hash_key: SecretStr = SecretStr(DEV_HASH_KEY)
    # How long a lead's data key fetched from ingest's vault is reused.
    lead_key_ttl_s: float = Field(60.0, gt=0, le=300)

    @model_validator(mode="after")
    def _refuse_the_development_hash_key_in_production(self) -> "RouterSettings":
        key = self.hash_key.get_secret_value()
        if self.platform.environment == "production" and key == DEV_HASH_KEY:
            raise ValueError("LX_ROUTER_HASH_KEY must be set to a real secret in production")
        if len(key.encode()) < 32:
            raise ValueError("LX_ROUTER_HASH_KEY must be at least 32 bytes")
        return self
