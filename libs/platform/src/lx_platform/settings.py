"""Settings shared by every service; each service subclasses ``ServiceSettings``.

Shared parts read ``LX_KAFKA_*``, ``LX_LOG_*`` and ``LX_PLATFORM_*``; a service's own
part reads ``LX_<SERVICE>_*`` (e.g. ``LX_INGEST_DATABASE_URL``).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from limits import parse_many
from pydantic import Field, IPvAnyNetwork, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from lx_platform.access import KeyFormatError, parse_public_keys

Environment = Literal["development", "test", "production"]
_PLACEHOLDERS = {"", "changeme", "dev-internal-token", "secret"}
# Never a buyer's network in production, whatever the allow-list says: the local host,
# link-local (cloud metadata at 169.254.169.254), "this network", multicast.
_NEVER_IN_PRODUCTION = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "100.100.100.200/32",  # Alibaba Cloud's metadata service
        "192.0.0.192/32",  # Oracle Cloud's
        "224.0.0.0/4",
        "::/127",
        "::ffff:0:0/96",
        "fe80::/10",
        "fd00:ec2::/32",
        "ff00::/8",
    )
)


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LX_KAFKA_", extra="ignore")

    bootstrap_servers: str = "127.0.0.1:19092"
    # Lets tests and several environments share one cluster without sharing topics.
    topic_prefix: str = ""
    create_topics: bool = True
    replication_factor: int = Field(1, ge=1)
    # How long the broker holds a fetch that finds no records. A record arriving ends
    # the wait at once, with one exception: aiokafka keeps one fetch in flight per
    # broker and leaves out partitions whose records the handler has not taken yet, so
    # a record arriving on such a partition waits for that fetch to end — for the next
    # record on any other partition or this long, whichever comes first. 50 ms had
    # every idle consumer polling 20 times a second; 500 cut the platform's idle CPU
    # from 558 to 256 ms per second (the broker's from 290 to 84) and, at 20 leads/s,
    # changed request-to-outcome p50/p99 from 416/778 to 452/712 ms (make bench-load).
    fetch_max_wait_ms: int = Field(500, ge=1)
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
    # The auction service (ping-post): ingest asks it to run an auction and claim a ping.
    auction_url: str = "http://127.0.0.1:8006"
    internal_timeout_s: float = 2.0
    # Keys sealing buyer integration secrets in config events (lx_platform.secrets):
    # "id:base64key" comma-separated, the first seals. Admin, delivery and auction need them.
    config_keys: SecretStr = SecretStr(
        "devcfg1:bHgtZGV2ZWxvcG1lbnQtY29uZmlnLWtleS0zMmJ5dGU="  # development only
    )
    # Networks buyer endpoints may reach although they are not globally routable
    # (lx_platform.egress): comma-separated CIDRs, e.g. "127.0.0.1/32". Empty by default;
    # `make run`, the end-to-end stack and the tests open their loopback fake buyer here.
    egress_allow_cidrs: Annotated[tuple[IPvAnyNetwork, ...], NoDecode] = ()
    # How long a buyer endpoint's name may take to resolve (admin and delivery).
    egress_resolve_timeout_s: float = Field(2.0, gt=0)
    # Hostile input, in every service (lx_platform.limits): a request body's bytes, how
    # deep its JSON nests and how many members and elements it holds in all.
    max_body_bytes: int = Field(1 << 20, ge=1)
    # At most 500: Python's json parser recurses, and fails at about 1,000 levels.
    max_json_depth: int = Field(32, ge=1, le=500)
    max_json_items: int = Field(10_000, ge=1)
    # Requests per operator token on the operator APIs (admin, billing, analytics), a
    # `limits` rate string ("100/second;3000/minute": both hold). Counted per process.
    operator_rate_limit: str = "100/second;3000/minute"
    # Public keys verifying the access tokens admin signs (lx_platform.access), by key id:
    # "kid:key" comma-separated (several during a rotation), each key an Ed25519 public
    # key as PEM or its 32 raw bytes in base64. Empty (production's default): billing,
    # analytics and ingest accept only the operator token. `make run` and the tests set it.
    access_token_public_keys: str = ""

    @field_validator("operator_rate_limit")
    @classmethod
    def _rate_limit_string(cls, value: str) -> str:
        try:
            parse_many(value)
        except ValueError as exc:
            raise ValueError(f"not a rate limit such as '100/second;3000/minute': {exc}") from exc
        return value

    @field_validator("access_token_public_keys")
    @classmethod
    def _public_keys(cls, value: str) -> str:
        try:
            parse_public_keys(value)
        except KeyFormatError as exc:
            raise ValueError(f"LX_PLATFORM_ACCESS_TOKEN_PUBLIC_KEYS: {exc}") from exc
        return value

    @field_validator("egress_allow_cidrs", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _refuse_placeholders_in_production(self) -> PlatformSettings:
        if self.environment == "production":
            for name in ("internal_token", "operator_token"):
                if getattr(self, name).get_secret_value() in _PLACEHOLDERS | {"dev-operator-token"}:
                    raise ValueError(f"LX_PLATFORM_{name.upper()} must be set to a real secret")
            if "bHgtZGV2ZWxvcG1lbnQtY29uZmlnLWtleS0zMmJ5dGU=" in (
                self.config_keys.get_secret_value()
            ):
                raise ValueError("LX_PLATFORM_CONFIG_KEYS must not use the development key")
            # A private network may hold a buyer reached over a private interconnect, so
            # production may open one (and each start logs it); these never hold one.
            for net in self.egress_allow_cidrs:
                for never in _NEVER_IN_PRODUCTION:
                    if net.version == never.version and net.overlaps(never):  # type: ignore[arg-type]
                        raise ValueError(
                            f"LX_PLATFORM_EGRESS_ALLOW_CIDRS: {net} overlaps {never}, "
                            "which production never reaches"
                        )
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
