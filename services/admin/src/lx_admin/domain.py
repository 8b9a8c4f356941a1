"""Admin's pure rules: source API keys and the requests that configure entities."""

from __future__ import annotations

import hashlib
import secrets
from decimal import Decimal
from typing import Annotated

from lx_schemas.events import AcceptanceRule, FieldSpec, FieldType, Status, Usd
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

API_KEY_PREFIX = "lxsk_"


def new_api_key() -> str:
    """A source key: a recognisable prefix plus 256 random bits."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def api_key_sha256(key: str) -> str:
    # A plain SHA-256 suffices: the key is 256 random bits, so there is nothing for a
    # slow password hash (argon2) to protect against, and ingest checks it per request.
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    return key[: len(API_KEY_PREFIX) + 6]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AccountCreate(Request):
    name: Annotated[str, Field(min_length=1, max_length=200)]


class CampaignCreate(Request):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    vertical: Annotated[str, Field(min_length=1, max_length=100)]
    fields: Annotated[list[FieldSpec], Field(min_length=1, max_length=200)]


class SourceCreate(Request):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    payout: Usd = Decimal("0.00")


class BuyerCreate(Request):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    endpoint_url: AnyHttpUrl
    price: Usd
    priority: Annotated[int, Field(ge=0, le=10_000)] = 100
    timeout_ms: Annotated[int, Field(ge=50, le=60_000)] = 5_000
    acceptance: AcceptanceRule = AcceptanceRule()


class BuyerUpdate(Request):
    status: Status | None = None
    endpoint_url: AnyHttpUrl | None = None
    price: Usd | None = None
    priority: Annotated[int, Field(ge=0, le=10_000)] | None = None
    timeout_ms: Annotated[int, Field(ge=50, le=60_000)] | None = None


def enum_fields_without_options(fields: list[FieldSpec]) -> list[dict[str, str]]:
    """An enum field with no options could never accept a value: every lead would fail."""
    return [
        {
            "field": f"fields.{i}.options",
            "code": "enum_without_options",
            "detail": f"enum field {f.name!r} needs at least one option",
        }
        for i, f in enumerate(fields)
        if f.type is FieldType.ENUM and not f.options
    ]


def check_unique_fields(fields: list[FieldSpec]) -> list[str]:
    seen: set[str] = set()
    dupes = []
    for f in fields:
        if f.name in seen:
            dupes.append(f.name)
        seen.add(f.name)
    return dupes
