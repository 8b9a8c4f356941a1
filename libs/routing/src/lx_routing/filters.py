"""A buyer's filters, evaluated against a lead's normalised values.

Values arrive normalised by ingest (a state upper case, a phone E.164, an e-mail lower
case, dates ISO ``YYYY-MM-DD``, decimals as strings); text compares caseless.

A missing value (absent, ``None`` or empty text) meets only ``not_exists``. It fails
every other operator, ``not_in`` and ``not_equals`` included: a buyer that filters
out TX does not want leads whose state is unknown either.

Patterns run in the ``regex`` module with a timeout, so an operator's catastrophic
pattern (``(a+)+$``) costs a routing decision at most ``REGEX_TIMEOUT_S``, never a
hung consumer; a pattern that times out is a failed filter.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import regex
from lx_schemas.events import FieldValue
from lx_schemas.rules import Filter, FilterOp

REGEX_TIMEOUT_S = 0.05


@dataclass(frozen=True)
class Verdict:
    """A filter's result; ``why`` names the lead's side when it failed."""

    ok: bool
    why: str = ""


PASS = Verdict(True)


def is_missing(value: FieldValue) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def as_text(value: FieldValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def as_number(value: FieldValue) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def as_date(value: FieldValue) -> dt.date | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.date.fromisoformat(value.strip()[:10])
    except ValueError:
        return None


def age_on(birth: dt.date, today: dt.date) -> int:
    """Whole years from ``birth`` to ``today`` (a 29 February birthday counts on 1 March)."""
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


@functools.lru_cache(maxsize=4096)
def compiled(pattern: str) -> regex.Pattern[str]:
    return regex.compile(pattern, regex.IGNORECASE)


def _equals(expected: str | int | float | bool, value: FieldValue) -> bool:
    if isinstance(expected, bool) or isinstance(value, bool):
        return as_text(value).casefold() == as_text(expected).casefold()
    if isinstance(expected, int | float):
        number = as_number(value)
        return number is not None and number == Decimal(str(expected))
    return as_text(value).casefold() == expected.casefold()


def _within(f: Filter, value: FieldValue) -> bool:
    low, high = f.min, f.max
    if isinstance(low, dt.date) or isinstance(high, dt.date):
        day = as_date(value)
        if day is None:
            return False
        return (low is None or day >= low) and (high is None or day <= high)  # type: ignore[operator]
    number = as_number(value)
    if number is None:
        return False
    return (low is None or number >= low) and (high is None or number <= high)


def _age_within(f: Filter, value: FieldValue, today: dt.date) -> tuple[bool, str]:
    birth = as_date(value)
    if birth is None:
        return False, "is not a date"
    age = age_on(birth, today)
    low, high = f.min, f.max
    if isinstance(low, dt.date) or isinstance(high, dt.date):
        return False, "cannot be compared (the filter's bounds are dates, not years)"
    ok = (low is None or age >= low) and (high is None or age <= high)
    return ok, f"gives age {age}"


def evaluate(f: Filter, values: Mapping[str, FieldValue], today: dt.date) -> Verdict:
    """Whether the lead meets ``f``; ``today`` is the date ages are counted at."""
    value = values.get(f.field)
    if f.op is FilterOp.NOT_EXISTS:
        return PASS if is_missing(value) else Verdict(False, "is present")
    if is_missing(value):
        return Verdict(False, "is missing")
    text = as_text(value)
    folded = text.casefold()
    match f.op:
        case FilterOp.EXISTS:
            ok = True
        case FilterOp.EQUALS:
            assert f.value is not None
            ok = _equals(f.value, value)
        case FilterOp.NOT_EQUALS:
            assert f.value is not None
            ok = not _equals(f.value, value)
        case FilterOp.IN:
            ok = folded in _folded_set(f.values)
        case FilterOp.NOT_IN:
            ok = folded not in _folded_set(f.values)
        case FilterOp.PREFIX_IN:
            ok = folded.startswith(_folded_prefixes(f.values))
        case FilterOp.RANGE:
            ok = _within(f, value)
        case FilterOp.REGEX:
            assert f.pattern is not None
            try:
                ok = compiled(f.pattern).search(text, timeout=REGEX_TIMEOUT_S) is not None
            except TimeoutError:
                return Verdict(False, "could not be matched in time (the pattern is too costly)")
            except regex.error:
                return Verdict(False, "could not be matched (the pattern is not valid)")
        case FilterOp.AGE_BETWEEN:
            ok, why = _age_within(f, value, today)
            return PASS if ok else Verdict(False, why)
        case _:  # pragma: no cover - every operator is handled above
            ok = False
    return PASS if ok else Verdict(False, f"is {_shown(text)}")


def _shown(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


# Filter lists reach 50,000 entries (ZIP lists); fold them once per distinct tuple.
@functools.lru_cache(maxsize=1024)
def _folded_set(values: tuple[str, ...]) -> frozenset[str]:
    return frozenset(v.casefold() for v in values)


@functools.lru_cache(maxsize=1024)
def _folded_prefixes(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(v.casefold() for v in values)
