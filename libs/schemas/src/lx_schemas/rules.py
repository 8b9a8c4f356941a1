"""What decides whether a buyer gets a lead, what it pays and what the source earns.

Pure data, carried in ``config.changed``: buyer filters (a small rule language over the
lead's fields), schedules, caps, the campaign's distribution, the source's controls and
payout. Evaluation lives with the services (``lx_routing``, ingest); these classes only
refuse a rule that could never be evaluated.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import zoneinfo
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import Field, IPvAnyNetwork, field_validator, model_validator

from lx_schemas.envelope import Frozen

Usd = Annotated[Decimal, Field(max_digits=14, decimal_places=2, ge=0)]
Percent = Annotated[Decimal, Field(max_digits=5, decimal_places=2, ge=0, le=100)]
FilterValue = str | int | float | bool
MAX_PATTERN_LENGTH = 200


# --- filters --------------------------------------------------------------------------------


class FilterOp(StrEnum):
    EQUALS = "equals"  # value
    NOT_EQUALS = "not_equals"  # value
    IN = "in"  # values (a state list, a ZIP list, enum options...)
    NOT_IN = "not_in"  # values
    PREFIX_IN = "prefix_in"  # values: e.g. ZIP3 prefixes
    RANGE = "range"  # min and/or max, inclusive, on a number or a date (ISO)
    REGEX = "regex"  # pattern, searched in the value's text
    EXISTS = "exists"  # the lead has a value
    NOT_EXISTS = "not_exists"
    AGE_BETWEEN = "age_between"  # min and/or max whole years, of a date of birth


class Filter(Frozen):
    """One condition a lead must meet for a buyer; a buyer's filters all must hold.

    Values compare with the field's normalised form (a state is upper case, a phone
    E.164, an e-mail lower case); text compares caseless.
    """

    field: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    op: FilterOp
    value: FilterValue | None = None
    values: Annotated[tuple[str, ...], Field(max_length=50_000)] = ()
    min: Decimal | dt.date | None = None
    max: Decimal | dt.date | None = None
    pattern: Annotated[str, Field(max_length=MAX_PATTERN_LENGTH)] | None = None
    # A name operators recognise in reasons ("filter 'CA only' of buyer Acme").
    label: Annotated[str, Field(max_length=100)] | None = None

    @model_validator(mode="after")
    def _operands(self) -> Filter:
        op = self.op
        if op in (FilterOp.EQUALS, FilterOp.NOT_EQUALS) and self.value is None:
            raise ValueError(f"{op.value} needs a value")
        if op in (FilterOp.IN, FilterOp.NOT_IN, FilterOp.PREFIX_IN) and not self.values:
            raise ValueError(f"{op.value} needs values")
        if op in (FilterOp.RANGE, FilterOp.AGE_BETWEEN):
            if self.min is None and self.max is None:
                raise ValueError(f"{op.value} needs min or max")
            if self.min is not None and self.max is not None and self.min > self.max:  # type: ignore[operator]
                raise ValueError("min is greater than max")
        if op is FilterOp.REGEX:
            if not self.pattern:
                raise ValueError("regex needs a pattern")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern does not compile: {exc}") from None
        return self

    def describe(self) -> str:
        """In words, for reasons and the trace: ``state in [CA, NY]``."""
        if self.label:
            return self.label
        op = self.op.value.replace("_", " ")
        if self.op in (FilterOp.IN, FilterOp.NOT_IN, FilterOp.PREFIX_IN):
            shown = ", ".join(self.values[:5]) + (", ..." if len(self.values) > 5 else "")
            return f"{self.field} {op} [{shown}]"
        if self.op in (FilterOp.RANGE, FilterOp.AGE_BETWEEN):
            low = "" if self.min is None else self.min
            high = "" if self.max is None else self.max
            return f"{self.field} {op} {low}..{high}"
        if self.op is FilterOp.REGEX:
            return f"{self.field} matches /{self.pattern}/"
        if self.op in (FilterOp.EXISTS, FilterOp.NOT_EXISTS):
            return f"{self.field} {op}"
        return f"{self.field} {op} {self.value}"


# --- schedules ------------------------------------------------------------------------------


class Weekday(StrEnum):
    MON = "mon"
    TUE = "tue"
    WED = "wed"
    THU = "thu"
    FRI = "fri"
    SAT = "sat"
    SUN = "sun"


_HHMM = r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$"


class ScheduleWindow(Frozen):
    """Open on ``days`` from ``start`` (inclusive) to ``end`` (exclusive), local time;
    ``end`` may be ``24:00``. A window may name its own price (per-schedule pricing)."""

    days: Annotated[tuple[Weekday, ...], Field(min_length=1, max_length=7)]
    start: Annotated[str, Field(pattern=_HHMM)] = "00:00"
    end: Annotated[str, Field(pattern=_HHMM)] = "24:00"
    price: Usd | None = None

    @model_validator(mode="after")
    def _ordered(self) -> ScheduleWindow:
        if self.start >= self.end:
            raise ValueError("start must be before end (windows do not cross midnight)")
        return self


class Schedule(Frozen):
    """When a buyer takes leads, in its own time zone; closed outside every window."""

    windows: Annotated[tuple[ScheduleWindow, ...], Field(min_length=1, max_length=50)]


def valid_timezone(name: str) -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None
    return name


# --- caps -----------------------------------------------------------------------------------


class CapPeriod(StrEnum):
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"  # Monday to Sunday
    MONTH = "month"
    TOTAL = "total"


class Cap(Frozen):
    """At most ``max_leads`` leads or ``max_usd`` spent per period (calendar periods in
    the buyer's time zone). Counted as reservations when a lead is routed."""

    period: CapPeriod
    max_leads: Annotated[int, Field(ge=1)] | None = None
    max_usd: Usd | None = None

    @model_validator(mode="after")
    def _one_limit(self) -> Cap:
        if (self.max_leads is None) == (self.max_usd is None):
            raise ValueError("a cap has exactly one of max_leads or max_usd")
        return self


# --- distribution, payout, margin -----------------------------------------------------------


class DistributionMode(StrEnum):
    WATERFALL = "waterfall"  # by priority (lower first), then the higher price
    HIGHEST_PRICE = "highest_price"  # by price, then priority
    WEIGHTED = "weighted"  # a weighted random order (buyer weights)
    ROUND_ROBIN = "round_robin"  # the first buyer rotates lead by lead


class Distribution(Frozen):
    mode: DistributionMode = DistributionMode.WATERFALL
    # 1: exclusive. More: the lead is sold to up to this many buyers, one after another.
    max_sales: Annotated[int, Field(ge=1, le=10)] = 1


class Margin(Frozen):
    """What the platform keeps at least: a buyer whose price leaves less over the
    source's payout is not offered the lead."""

    fixed: Usd = Decimal("0.00")
    percent: Percent = Decimal("0.00")  # of the buyer's price


class Payout(Frozen):
    """What the source earns per sale: a fixed amount, or a share of the sale price."""

    fixed: Usd | None = None
    percent: Percent | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Payout:
        if (self.fixed is None) == (self.percent is None):
            raise ValueError("a payout is either fixed or a percent of the price")
        return self

    def for_price(self, price: Decimal) -> Decimal:
        if self.fixed is not None:
            return self.fixed
        assert self.percent is not None
        return (price * self.percent / 100).quantize(Decimal("0.01"))


class PingPost(Frozen):
    """A campaign's auctions: buyers pinged in parallel for at most ``auction_ms``; the
    winning bid held for a post within ``ttl_s``."""

    enabled: bool = False
    auction_ms: Annotated[int, Field(ge=50, le=10_000)] = 1_000
    ttl_s: Annotated[int, Field(ge=5, le=3_600)] = 120


# --- source controls ------------------------------------------------------------------------


class SourceCapPeriod(StrEnum):
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"


class SourceCap(Frozen):
    period: SourceCapPeriod
    max_leads: Annotated[int, Field(ge=1)]


class SourceControls(Frozen):
    """Limits on what a source may send (checked at ingest, per source, in UTC periods)."""

    caps: Annotated[tuple[SourceCap, ...], Field(max_length=3)] = ()
    # Posts per second with a burst; a post over it is answered 429 with Retry-After.
    rate_per_s: Annotated[float, Field(gt=0, le=100_000)] | None = None
    burst: Annotated[int, Field(ge=1, le=100_000)] | None = None
    pings_per_s: Annotated[float, Field(gt=0, le=100_000)] | None = None
    # Empty: any address. Otherwise the source's posts must come from these networks.
    ip_allow: Annotated[tuple[IPvAnyNetwork, ...], Field(max_length=100)] = ()

    @field_validator("caps")
    @classmethod
    def _one_per_period(cls, caps: tuple[SourceCap, ...]) -> tuple[SourceCap, ...]:
        if len({c.period for c in caps}) != len(caps):
            raise ValueError("one cap per period")
        return caps

    def allows(self, address: str) -> bool:
        if not self.ip_allow:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.ip_allow)
