"""Ingest's pure rules: normalising a posted lead against its campaign's fields.

Every problem is reported with the field's name and a machine-readable code; the
caller gets all of them at once, not the first one.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from lx_schemas.events import FieldSpec, FieldType, FieldValue

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
