"""Ingest's pure rules: normalising a posted lead against its campaign's fields, the
keys of its duplicate check, and what an ``Idempotency-Key`` that was seen before means.

Every problem is reported with the field's name and a machine-readable code; the
caller gets all of them at once, not the first one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from lx_schemas.events import (
    DEDUPE_MATCHABLE_TYPES,
    DedupeRule,
    DedupeScope,
    FieldSpec,
    FieldType,
    FieldValue,
)

US_STATES = frozenset(
    [
        "AL",
        "AK",
        "AZ",
        "AR",
        "CA",
        "CO",
        "CT",
        "DE",
        "DC",
        "FL",
        "GA",
        "HI",
        "ID",
        "IL",
        "IN",
        "IA",
        "KS",
        "KY",
        "LA",
        "ME",
        "MD",
        "MA",
        "MI",
        "MN",
        "MS",
        "MO",
        "MT",
        "NE",
        "NV",
        "NH",
        "NJ",
        "NM",
        "NY",
        "NC",
        "ND",
        "OH",
        "OK",
        "OR",
        "PA",
        "RI",
        "SC",
        "SD",
        "TN",
        "TX",
        "UT",
        "VT",
        "VA",
        "WA",
        "WV",
        "WI",
        "WY",
        "PR",
        "VI",
        "GU",
        "AS",
        "MP",
    ]
)
_ZIP = re.compile(r"^(\d{5})(?:-?\d{4})?$")
_TRUE = {"true", "yes", "y", "1", "on"}
_FALSE = {"false", "no", "n", "0", "off"}


@dataclass(frozen=True)
class FieldError:
    field: str
    code: str
    detail: str


class Invalid(ValueError):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


@dataclass(frozen=True)
class NormalisedLead:
    fields: dict[str, FieldValue]  # may travel in clear
    pii: dict[str, FieldValue]  # sealed under the lead's key


def _text(spec: FieldSpec, value: Any) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise Invalid("wrong_type", "expected a string")
    text = str(value).strip()
    if not text:
        raise Invalid("required", "must not be blank")
    if len(text) > spec.max_length:
        raise Invalid("too_long", f"longer than {spec.max_length} characters")
    return text


def _normalise(spec: FieldSpec, value: Any) -> FieldValue:
    t = spec.type
    if t is FieldType.BOOLEAN:
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in _TRUE | _FALSE:
            return word in _TRUE
        raise Invalid("wrong_type", "expected true or false")
    if t is FieldType.INTEGER:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise Invalid("wrong_type", "expected an integer")
        try:
            return int(str(value).strip())
        except ValueError:
            raise Invalid("wrong_type", "expected an integer") from None
    if t is FieldType.DECIMAL:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise Invalid("wrong_type", "expected a number")
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            raise Invalid("wrong_type", "expected a number") from None
        if not number.is_finite():
            raise Invalid("wrong_type", "expected a finite number")
        return str(number)  # a string: decimals never pass through float
    text = _text(spec, value)
    if t is FieldType.TEXT:
        return text
    if t is FieldType.EMAIL:
        try:
            return validate_email(text, check_deliverability=False).normalized.lower()
        except EmailNotValidError as exc:
            raise Invalid("invalid_email", str(exc)) from None
    if t is FieldType.PHONE:
        try:
            phone = phonenumbers.parse(text, "US")
        except phonenumbers.NumberParseException as exc:
            raise Invalid("invalid_phone", str(exc)) from None
        if not phonenumbers.is_valid_number(phone):
            raise Invalid("invalid_phone", "not a valid phone number")
        return str(phonenumbers.format_number(phone, phonenumbers.PhoneNumberFormat.E164))
    if t is FieldType.DATE:
        try:
            return dt.date.fromisoformat(text).isoformat()
        except ValueError:
            raise Invalid("invalid_date", "expected a date as YYYY-MM-DD") from None
    if t is FieldType.ENUM:
        for option in spec.options:
            if option.lower() == text.lower():
                return option
        raise Invalid("not_an_option", f"expected one of {list(spec.options)}")
    if t is FieldType.US_STATE:
        if text.upper() in US_STATES:
            return text.upper()
        raise Invalid("invalid_state", "expected a two-letter US state code")
    if t is FieldType.ZIP:
        match = _ZIP.match(text)
        if match:
            return match.group(1)
        raise Invalid("invalid_zip", "expected a 5-digit ZIP code")
    raise Invalid("unsupported_type", f"field type {t} is not supported")  # pragma: no cover


def normalise_lead(
    specs: Sequence[FieldSpec], data: Mapping[str, Any]
) -> tuple[NormalisedLead | None, list[FieldError]]:
    """Check ``data`` against the campaign's fields; returns the lead or every error."""
    errors: list[FieldError] = []
    known = {s.name: s for s in specs}
    for name in data:
        if name not in known:
            errors.append(FieldError(name, "unknown_field", "not a field of this campaign"))
    fields: dict[str, FieldValue] = {}
    pii: dict[str, FieldValue] = {}
    for spec in specs:
        raw = data.get(spec.name)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            if spec.required:
                errors.append(FieldError(spec.name, "required", "this field is required"))
            continue
        try:
            value = _normalise(spec, raw)
        except Invalid as exc:
            errors.append(FieldError(spec.name, exc.code, str(exc)))
            continue
        (pii if spec.pii else fields)[spec.name] = value
    if errors:
        return None, errors
    return NormalisedLead(fields=fields, pii=pii), []


# --- duplicate checks -----------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class DedupeKey:
    """One entry of the duplicate index: a keyed hash, never the value itself."""

    scope: DedupeScope
    scope_id: uuid.UUID
    field: str
    value_hash: bytes


def match_value(spec: FieldSpec, value: FieldValue) -> str:
    """The form two values must share to match: e-mail and phone are already canonical
    (lower-cased address, E.164); text is compared caseless with spaces collapsed."""
    text = str(value)
    if spec.type is FieldType.TEXT:
        return " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return text


def keyed_hash(key: bytes, *parts: str) -> bytes:
    """HMAC-SHA256 of ``parts`` (JSON-encoded, so no two part lists collide)."""
    message = json.dumps(parts, ensure_ascii=False, separators=(",", ":")).encode()
    return hmac.new(key, message, hashlib.sha256).digest()


def dedupe_keys(
    rule: DedupeRule,
    specs: Sequence[FieldSpec],
    lead: NormalisedLead,
    *,
    campaign_id: uuid.UUID,
    account_id: uuid.UUID,
    hash_key: bytes,
) -> list[DedupeKey]:
    """The index entries ``lead`` takes under ``rule``, in the one order every request
    locks them in (so two requests never wait for each other in a cycle).

    A field the lead left empty matches nothing. The scope is part of the hashed
    message: the same e-mail yields unrelated hashes in two accounts, so the index
    cannot tell that two customers of the platform saw the same consumer.
    """
    scope_id = campaign_id if rule.scope is DedupeScope.CAMPAIGN else account_id
    known = {s.name: s for s in specs}
    keys = []
    for name in rule.fields:
        spec = known.get(name)
        value = lead.pii.get(name, lead.fields.get(name))
        # Admin refuses rules on unknown or unmatchable fields; a stale rule still must
        # not turn every lead into a duplicate.
        if spec is None or spec.type not in DEDUPE_MATCHABLE_TYPES or value is None:
            continue
        digest = keyed_hash(
            hash_key, "lx-dedupe-v1", rule.scope, str(scope_id), name, match_value(spec, value)
        )
        keys.append(DedupeKey(rule.scope, scope_id, name, digest))
    return sorted(keys)


def first_duplicate(rule: DedupeRule, duplicated: set[str]) -> str | None:
    """The field to name in the answer: the first of the rule's fields that matched."""
    return next((name for name in rule.fields if name in duplicated), None)


def duplicate_detail(rule: DedupeRule, field: str) -> str:
    where = "campaign" if rule.scope is DedupeScope.CAMPAIGN else "account"
    days = "day" if rule.window_days == 1 else f"{rule.window_days} days"
    return f"a lead with the same {field} was accepted in this {where} within the last {days}"


# --- idempotency keys -----------------------------------------------------------------------

# Printable ASCII without spaces, as long as Stripe's; a UUID is the usual choice.
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def valid_idempotency_key(key: str) -> bool:
    return bool(_IDEMPOTENCY_KEY.match(key))


def request_fingerprint(hash_key: bytes, body: Mapping[str, Any]) -> bytes:
    """What "the same request" means: the same JSON object, whatever its key order or
    spacing. Keyed, because the body holds PII."""
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return keyed_hash(hash_key, "lx-idempotency-v1", canonical)


def remembers(status_code: int) -> bool:
    """Whether an answer is kept for the key's retries.

    Only requests that got as far as claiming the key are ever remembered: those
    rejected before it (400, 401, 403, 413) changed nothing and may be sent again once
    fixed. From there on, an answer that decides the lead (202; 422 for invalid fields
    or a duplicate) is kept, as Stripe keeps its 4xx; a 5xx is not, so that a retry
    can succeed.
    """
    return 200 <= status_code < 500


class KeyVerdict(StrEnum):
    NEW = "new"  # unknown (or expired) key: this request claims it
    TAKE_OVER = "take_over"  # the request holding it died: this retry continues its work
    REPLAY = "replay"  # answered before: the same answer again
    REUSED = "reused"  # the key came with another body: 422
    IN_FLIGHT = "in_flight"  # the first request is still running: 409


@dataclass(frozen=True)
class StoredKey:
    fingerprint: bytes
    created_at: dt.datetime
    lease_until: dt.datetime | None  # None once answered
    status_code: int | None
    lead_id: uuid.UUID | None


def judge_key(
    stored: StoredKey, fingerprint: bytes, *, now: dt.datetime, ttl: dt.timedelta
) -> KeyVerdict:
    """What a request with a key seen before gets."""
    if stored.created_at <= now - ttl:
        return KeyVerdict.NEW  # expired; the pruner had not deleted it yet
    if not hmac.compare_digest(stored.fingerprint, fingerprint):
        return KeyVerdict.REUSED
    if stored.status_code is not None:
        return KeyVerdict.REPLAY
    if stored.lease_until is not None and stored.lease_until > now:
        return KeyVerdict.IN_FLIGHT
    return KeyVerdict.TAKE_OVER
