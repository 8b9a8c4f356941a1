"""Ingest's pure rules: normalising a posted lead against its campaign's fields, the
keys of its duplicate check, what an ``Idempotency-Key`` that was seen before means, the
source's controls (client address, rate and cap periods) and the words a source reads
about its lead's fate.

Every problem is reported with the field's name and a machine-readable code; the
caller gets all of them at once, not the first one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import math
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
    Rejection,
    RejectionCode,
)
from lx_schemas.rules import SourceCapPeriod
from pydantic import HttpUrl, TypeAdapter, ValidationError

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
# pydantic-core's URL parser (the WHATWG rules browsers follow): lower-cases the scheme
# and host, encodes an international name as punycode, percent-encodes the path.
_HTTP_URL: TypeAdapter[HttpUrl] = TypeAdapter(HttpUrl)
# A TrustedForm certificate: https://cert.trustedform.com/<40 hex digits>.
_TRUSTEDFORM = re.compile(r"^https?://cert\.trustedform\.com/([0-9a-f]{40})/?$", re.IGNORECASE)
# A Jornaya LeadiD token: 36 characters shaped like a UUID (not necessarily an RFC one).
_LEADID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
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
    if t is FieldType.IP:
        try:
            return str(ipaddress.ip_address(text))  # the compressed form
        except ValueError:
            raise Invalid("invalid_ip", "expected an IPv4 or IPv6 address") from None
    if t is FieldType.URL:
        return _url(spec, text)
    if t is FieldType.CONSENT:
        return _consent(text)
    raise Invalid("unsupported_type", f"field type {t} is not supported")  # pragma: no cover


def _url(spec: FieldSpec, text: str) -> str:
    try:
        url = _HTTP_URL.validate_python(text)
    except ValidationError:
        raise Invalid("invalid_url", "expected an http or https URL with a host") from None
    if not url.host:
        raise Invalid("invalid_url", "expected an http or https URL with a host")
    if url.username or url.password:
        raise Invalid("invalid_url", "a URL must not carry a user name or password")
    normalised = str(url)
    if len(normalised) > spec.max_length:  # punycode and escapes may lengthen it
        raise Invalid("too_long", f"longer than {spec.max_length} characters once normalised")
    return normalised


def _consent(text: str) -> str:
    """A TrustedForm certificate URL (normalised to https and lower-case hex) or a
    Jornaya LeadiD token (upper case, as Jornaya prints them)."""
    if match := _TRUSTEDFORM.match(text):
        return f"https://cert.trustedform.com/{match.group(1).lower()}"
    if _LEADID.match(text):
        return text.upper()
    raise Invalid(
        "invalid_consent",
        "expected a TrustedForm certificate URL (https://cert.trustedform.com/<40 hex>)"
        " or a Jornaya LeadiD token",
    )


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
    can succeed. Nor is a 429 (a source cap): it says "not now", and the retry after
    its Retry-After must be decided afresh.
    """
    return 200 <= status_code < 500 and status_code != 429


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


# --- pings ----------------------------------------------------------------------------------


def normalise_ping(
    specs: Sequence[FieldSpec], data: Mapping[str, Any]
) -> tuple[NormalisedLead | None, list[FieldError]]:
    """A ping carries the lead's non-PII fields only: a PII field sent anyway is refused
    (``pii_in_ping``, naming it) rather than dropped, so the source learns to leave it
    out; the non-PII fields are checked and normalised as a post's would be."""
    pii = [
        FieldError(
            s.name, "pii_in_ping", "personal data has no place in a ping; send it with the post"
        )
        for s in specs
        if s.pii and data.get(s.name) is not None
    ]
    if pii:
        return None, pii
    return normalise_lead([s for s in specs if not s.pii], data)


# --- source controls ------------------------------------------------------------------------


def client_address(
    peer: str | None,
    forwarded_for: Sequence[str],
    trusted_proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> str | None:
    """The address a request came from: the connection's peer, unless that peer is a
    proxy we trust, in which case ``X-Forwarded-For`` is read from the right, skipping
    our own proxies, and the first other address is the client. Entries left of it were
    written by the client itself and prove nothing. ``forwarded_for``: every value of
    the header, in order (a proxy may add its own header line instead of appending)."""

    def trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip.version == net.version and ip in net for net in trusted_proxies)

    if peer is None or not trusted(peer):
        return peer
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        if not trusted(hop):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return None  # garbage where an address should be: allowed by no list
    return hops[0] if hops else peer


@dataclass(frozen=True)
class RateWindow:
    """A rate of ``rate_per_s`` with a burst, as the ``limits`` library counts it: at most
    ``amount`` requests in any moving window of ``seconds`` (whole seconds)."""

    amount: int
    seconds: int


def rate_window(rate_per_s: float, burst: int | None = None) -> RateWindow:
    """``burst`` requests at once (the rate rounded up when none is set), then on
    average ``rate_per_s``: a window of ``burst / rate`` seconds, rounded up to the whole
    second ``limits`` counts in (so the average may come out slightly below the rate,
    never above it)."""
    amount = burst if burst is not None else max(1, math.ceil(rate_per_s))
    return RateWindow(amount=amount, seconds=max(1, math.ceil(amount / rate_per_s)))


def retry_after_s(seconds: float) -> int:
    """A ``Retry-After`` value: whole seconds, rounded up, at least one."""
    return max(1, math.ceil(seconds))


def cap_period(period: SourceCapPeriod, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The UTC calendar period holding ``now``: its start (inclusive) and end."""
    now = now.astimezone(dt.UTC)
    if period is SourceCapPeriod.HOUR:
        start = now.replace(minute=0, second=0, microsecond=0)
        return start, start + dt.timedelta(hours=1)
    if period is SourceCapPeriod.DAY:
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + dt.timedelta(days=1)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else (start.replace(month=start.month + 1))
    )
    return start, following


# --- why a lead was refused, or not sold: words for the source ------------------------------

# What a field error means, in words that never quote the value (events carry these).
_FIELD_ERROR_WORDS = {
    "required": "is required",
    "unknown_field": "is not a field of this campaign",
    "wrong_type": "has the wrong type",
    "too_long": "is too long",
    "invalid_email": "is not a valid e-mail address",
    "invalid_phone": "is not a valid phone number",
    "invalid_date": "is not a date (YYYY-MM-DD)",
    "not_an_option": "is not one of the field's options",
    "invalid_state": "is not a US state code",
    "invalid_zip": "is not a 5-digit ZIP code",
    "invalid_ip": "is not an IP address",
    "invalid_url": "is not an http or https URL",
    "invalid_consent": "is not a TrustedForm certificate URL or Jornaya LeadiD token",
    "pii_in_ping": "is personal data, which a ping must not carry",
}
_FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_REJECTIONS = 200  # LeadRejected's bound


def field_rejections(errors: Sequence[FieldError]) -> tuple[Rejection, ...]:
    """Field errors as rejections fit for an event: no value is ever quoted (an error's
    own text may, e.g. an e-mail's domain), and an unknown field is named only if its
    name looks like a field's (a key is the source's free text: it could hold PII)."""
    rejections = []
    for error in errors[:MAX_REJECTIONS]:
        named = _FIELD_NAME.match(error.field) is not None
        words = _FIELD_ERROR_WORDS.get(error.code, f"failed validation ({error.code})")
        rejections.append(
            Rejection(
                code=RejectionCode.VALIDATION,
                detail=f"{error.field if named else 'a field'} {words} [{error.code}]",
                field=error.field if named else None,
            )
        )
    return tuple(rejections)


# How a buyer's reason reads to a source: never the buyer's name, nor its own words.
_BUYER_WORDS = {
    RejectionCode.FILTER: "filtered out",
    RejectionCode.SCHEDULE_CLOSED: "closed at this hour",
    RejectionCode.BUYER_CAP: "at their cap",
    RejectionCode.BUYER_BUDGET: "out of budget",
    RejectionCode.BUYER_PAUSED: "paused",
    RejectionCode.BUYER_DUPLICATE: "already had this consumer",
    RejectionCode.ALREADY_SOLD_TO_BUYER: "already bought this lead",
    RejectionCode.PRICE_BELOW_PAYOUT: "priced below the payout",
    RejectionCode.PRICE_BELOW_FLOOR: "bid below the floor",
    RejectionCode.CIRCUIT_OPEN: "temporarily unavailable",
    RejectionCode.NO_FUNDS: "out of funds",
    RejectionCode.BUYER_REJECTED: "rejected it",
    RejectionCode.BUYER_ERROR: "failed to answer",
    RejectionCode.OUTCOME_UNKNOWN_UNRESOLVED: "gave no usable answer",
}


def buyer_words(code: str) -> str:
    try:
        return _BUYER_WORDS.get(RejectionCode(code), code.replace("_", " "))
    except ValueError:
        return code.replace("_", " ")


def count_codes(codes: Sequence[str]) -> list[tuple[str, int]]:
    """Codes with how often each came, most frequent first (then alphabetical)."""
    counts: dict[str, int] = {}
    for code in codes:
        counts[code] = counts.get(code, 0) + 1
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def unsold_detail(codes: Sequence[str]) -> str:
    """``no buyer accepted: 2 filtered out, 1 rejected it``: how many buyers fell for
    each reason, without saying which buyers."""
    if not codes:
        return "no buyer was available for this lead"
    parts = ", ".join(f"{n} {buyer_words(code)}" for code, n in count_codes(codes))
    return f"no buyer accepted: {parts}"


def sold_detail(sales: int, returns: int) -> str:
    sold = f"sold to {sales} buyer{'s' if sales != 1 else ''}"
    if returns:
        sold += f"; {returns} sale{'s' if returns != 1 else ''} returned"
    return sold


# --- data subjects (access and erasure) -----------------------------------------------------

# A data subject's requests are answered within this (GDPR art. 12(3): one month).
PRIVACY_DEADLINE = dt.timedelta(days=30)


class SubjectKind(StrEnum):
    EMAIL = "email"
    PHONE = "phone"


_SUBJECT_TYPES = {FieldType.EMAIL: SubjectKind.EMAIL, FieldType.PHONE: SubjectKind.PHONE}


@dataclass(frozen=True, order=True)
class SubjectKey:
    """One entry of the subject index: a keyed hash of a normalised e-mail or phone."""

    kind: SubjectKind
    value_hash: bytes


def subject_hash(hash_key: bytes, account_id: uuid.UUID, kind: SubjectKind, value: str) -> bytes:
    """Scoped by account: one consumer in two accounts gives unrelated hashes, so the
    index cannot link tenants' customers, and a request reaches one account only."""
    return keyed_hash(hash_key, "lx-subject-v1", str(account_id), kind.value, value)


def subject_keys(
    specs: Sequence[FieldSpec], lead: NormalisedLead, *, account_id: uuid.UUID, hash_key: bytes
) -> list[SubjectKey]:
    """The index entries of a lead: every e-mail and phone field it holds, PII or not,
    already canonical (lower-cased address, E.164) as ``normalise_lead`` left them."""
    keys = set()
    for spec in specs:
        kind = _SUBJECT_TYPES.get(spec.type)
        value = lead.pii.get(spec.name, lead.fields.get(spec.name))
        if kind is not None and value is not None:
            keys.add(SubjectKey(kind, subject_hash(hash_key, account_id, kind, str(value))))
    return sorted(keys)


def normalise_subject(kind: SubjectKind, value: str) -> str:
    """A requester's e-mail or phone in the form leads were indexed under; ``Invalid``
    (with the field's code) if it is not one."""
    field_type = FieldType.EMAIL if kind is SubjectKind.EMAIL else FieldType.PHONE
    return str(_normalise(FieldSpec(name=kind.value, type=field_type), value))


def privacy_overdue(status: str, due_at: dt.datetime, now: dt.datetime) -> bool:
    return status != "completed" and due_at <= now
