import base64
from typing import Annotated, Any

from lx_platform.settings import ServiceSettings
from pydantic import Field, IPvAnyNetwork, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

# Development-only key-encryption key; production refuses it.
DEV_KEK = base64.b64encode(b"lx-development-kek-not-a-secret!").decode()
# Development-only key of the keyed hashes (duplicate index, idempotency fingerprints).
DEV_HASH_KEY = "lx-development-hash-key-not-a-secret"


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LX_INGEST_", extra="ignore")

    database_url: str = "postgresql+psycopg://lx:lx@127.0.0.1:25432/lx_ingest"
    http_port: int = 8001
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    # Key-encryption keys of the PII vault, "id:base64key" comma-separated; the first wraps.
    vault_keks: SecretStr = SecretStr(f"dev1:{DEV_KEK}")
    # HMAC-SHA256 key: the duplicate index and idempotency fingerprints hold only keyed
    # hashes of normalised values, never the values. Changing it forgets the duplicate
    # index (leads seen before the change no longer match).
    hash_key: SecretStr = SecretStr(DEV_HASH_KEY)
    # An Idempotency-Key is remembered this long after its first request (24 h at least).
    idempotency_ttl_hours: int = Field(24, ge=24, le=24 * 30)
    # A request holding a key this long without finishing is presumed dead (a crashed
    # replica); a retry may then take the key over, with the same lead id.
    idempotency_lease_s: float = Field(60.0, ge=5.0)
    # Expired idempotency keys and duplicate-index entries are deleted in batches.
    prune_interval_s: float = Field(300.0, gt=0)
    prune_batch_rows: int = Field(1_000, ge=1)
    # Refused posts stay this long for their source's "why?" (GET /v1/leads/{id}).
    rejected_retention_days: int = Field(30, ge=1)
    # Proxies (load balancers) whose X-Forwarded-For is believed, comma-separated CIDRs.
    # Empty: the connection's own peer is the client, whatever the header says.
    trusted_proxies: Annotated[tuple[IPvAnyNetwork, ...], NoDecode] = ()
    # A ping waits for the campaign's auction_ms plus this much (the auction service's
    # own work and the network); past it the source gets 503 auction_unavailable.
    auction_margin_ms: int = Field(500, ge=0, le=10_000)
    # How long a claim of a ping (at its post) may take.
    auction_claim_timeout_s: float = Field(2.0, gt=0)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _refuse_the_development_hash_key_in_production(self) -> "IngestSettings":
        key = self.hash_key.get_secret_value()
        if self.platform.environment == "production" and key == DEV_HASH_KEY:
            raise ValueError("LX_INGEST_HASH_KEY must be set to a real secret in production")
        if len(key.encode()) < 32:
            raise ValueError("LX_INGEST_HASH_KEY must be at least 32 bytes")
        return self

    def keks(self) -> tuple[dict[str, bytes], str]:
        pairs = [p.split(":", 1) for p in self.vault_keks.get_secret_value().split(",") if p]
        keys = {kid.strip(): base64.b64decode(b64) for kid, b64 in pairs}
        if self.platform.environment == "production" and base64.b64decode(DEV_KEK) in keys.values():
            raise ValueError("LX_INGEST_VAULT_KEKS must not use the development key in production")
        return keys, pairs[0][0].strip()
