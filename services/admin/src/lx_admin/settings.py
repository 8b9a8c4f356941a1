from lx_platform.access import DEFAULT_TTL_S, KeyFormatError, parse_signing_key
from lx_platform.settings import ServiceSettings
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict


class AdminSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LX_ADMIN_", extra="ignore")

    database_url: str = "postgresql+psycopg://lx:lx@127.0.0.1:25432/lx_admin"
    http_port: int = 8000
    # Sign-in attempts per e-mail address (limits' notation; per process): a password or
    # a 6-digit TOTP code must not be guessable by trying fast.
    login_rate_limit: str = "5/minute;20/hour"
    # Requests per buyer token (limits' notation; per process) on the buyer's own routes
    # (/v1/buyer/...): a buyer's runaway script or a stolen token cannot flood them.
    buyer_rate_limit: str = "10/second;300/minute"
    # The Ed25519 key signing access tokens (POST /v1/auth/access-token): "kid:key", the
    # key as PKCS#8 PEM or its 32 raw bytes in base64; its public half goes into every
    # service's LX_PLATFORM_ACCESS_TOKEN_PUBLIC_KEYS under the same kid. Empty
    # (production's default): no access tokens are minted (503 access_tokens_disabled).
    access_token_signing_key: SecretStr = SecretStr("")
    # An access token's life: a revoked credential's tokens live at most this long.
    access_token_ttl_s: int = Field(DEFAULT_TTL_S, ge=30, le=3600)

    @field_validator("access_token_signing_key")
    @classmethod
    def _signing_key(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value():
            try:
                parse_signing_key(value.get_secret_value())
            except KeyFormatError as exc:
                # Never the value itself in the message: it is the private key.
                raise ValueError(f"LX_ADMIN_ACCESS_TOKEN_SIGNING_KEY: {exc}") from None
        return value
