"""Admin's pure rules: source API keys and the requests that configure entities."""

from __future__ import annotations

import hashlib
import secrets
from decimal import Decimal
from typing import Annotated

from lx_schemas.events import (
    DEDUPE_MATCHABLE_TYPES,
    AcceptanceRule,
    DedupeRule,
    FieldSpec,
    FieldType,
    Status,
    Usd,
)
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
    # Refuse a lead when any of these fields matches a lead accepted in the scope within
    # the window; none: no duplicate check.
    dedupe: DedupeRule | None = None


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


def dedupe_rule_errors(fields: list[FieldSpec], rule: DedupeRule | None) -> list[dict[str, str]]:
    """A duplicate check may name only the campaign's own fields that identify a
    consumer (e-mail, phone, text); matching on a state or a ZIP would refuse most leads."""
    if rule is None:
        return []
    known = {f.name: f for f in fields}
    errors = []
    for i, name in enumerate(rule.fields):
        spec = known.get(name)
        if spec is None:
            errors.append(
                {
                    "field": f"dedupe.fields.{i}",
                    "code": "unknown_dedupe_field",
                    "detail": f"{name!r} is not a field of this campaign",
                }
            )
        elif spec.type not in DEDUPE_MATCHABLE_TYPES:
            kinds = ", ".join(sorted(t.value for t in DEDUPE_MATCHABLE_TYPES))
            errors.append(
                {
                    "field": f"dedupe.fields.{i}",
                    "code": "dedupe_field_not_matchable",
                    "detail": f"{name!r} is a {spec.type.value} field; duplicates match on {kinds}",
                }
            )
    return errors


def check_unique_fields(fields: list[FieldSpec]) -> list[str]:
    seen: set[str] = set()
    dupes = []
    for f in fields:
        if f.name in seen:
            dupes.append(f.name)
        seen.add(f.name)
    return dupes
