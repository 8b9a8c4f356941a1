"""Whether a buyer may take a lead at all, and at what price it is offered.

``screen`` looks only at what the buyer's configuration and the lead say: its status,
its filters and its schedule. Caps, budgets, the per-buyer duplicate window and the
margin need state or a price, and are judged by the router after ``screen``.

Missing values: a filter on a field the lead lacks (absent, ``None`` or empty) fails,
except ``not_exists``, which passes. ``not_in`` and ``not_equals`` fail too — a buyer
filtering out TX does not want leads whose state is unknown (``lx_routing.filters``).

Ages (``age_between``) are counted at ``now``'s date in the buyer's time zone.

Reasons never quote a personal value: for the fields named in ``pii`` the detail says
only that the filter failed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from decimal import Decimal
from typing import cast

from lx_schemas.events import BuyerState, FieldValue, Rejection, RejectionCode, Status
from lx_schemas.rules import Filter, FilterOp

from lx_routing.filters import evaluate
from lx_routing.schedule import describe_instant, local, open_window


class ScreenMemo:
    """What screening found for one batch of leads, reused by the leads that share a
    value: a buyer's filter is judged once per value (and per minute, for ages), its
    schedule and its price once per minute. A lead's verdict is exactly what ``screen``
    alone would give; only the work is shared (the rejections are immutable).

    Buyers are told apart by ``id``, so the memo keeps every buyer it saw alive: no other
    configuration object can take an id it holds. Use one per batch of configuration."""

    def __init__(self) -> None:
        self.verdicts: dict[tuple[object, ...], object] = {}
        self._buyers: dict[int, BuyerState] = {}

    def pin(self, buyer: BuyerState) -> int:
        key = id(buyer)
        if key not in self._buyers:
            self._buyers[key] = buyer
        return key


_UNSEEN = object()


def _minute(now: dt.datetime) -> int:
    # Whatever screening reads of ``now`` (a local date, a weekday, an "HH:MM") is the
    # same throughout a UTC minute: time zones are offset by whole minutes.
    return int(now.timestamp()) // 60


def screen(
    buyer: BuyerState,
    values: Mapping[str, FieldValue],
    now: dt.datetime,
    *,
    pii: Collection[str] = (),
    memo: ScreenMemo | None = None,
) -> Rejection | None:
    """None when ``buyer`` may take a lead with ``values`` at ``now``; else why not."""
    if buyer.status != Status.ACTIVE:
        return Rejection(
            code=RejectionCode.BUYER_PAUSED,
            detail=f"buyer {buyer.name} is paused",
            buyer_id=buyer.buyer_id,
        )
    if memo is None:
        if buyer.filters:
            today = local(now, buyer.timezone).date()
            for f in buyer.filters:
                rejection = _filter_fails(buyer, f, values, today, pii)
                if rejection is not None:
                    return rejection
        return _closed(buyer, now)
    b, minute = memo.pin(buyer), _minute(now)
    seen = memo.verdicts
    for i, f in enumerate(buyer.filters):
        value = values.get(f.field)
        age = f.op is FilterOp.AGE_BETWEEN
        key: tuple[object, ...] = (b, i, type(value), value, f.field in pii, age and minute)
        verdict = seen.get(key, _UNSEEN)
        if verdict is _UNSEEN:
            today = local(now, buyer.timezone).date() if age else now.date()
            verdict = seen[key] = _filter_fails(buyer, f, values, today, pii)
        if verdict is not None:
            return cast(Rejection, verdict)
    key = (b, "schedule", minute)
    verdict = seen.get(key, _UNSEEN)
    if verdict is _UNSEEN:
        verdict = seen[key] = _closed(buyer, now)
    return cast(Rejection | None, verdict)


def _filter_fails(
    buyer: BuyerState,
    f: Filter,
    values: Mapping[str, FieldValue],
    today: dt.date,
    pii: Collection[str],
) -> Rejection | None:
    verdict = evaluate(f, values, today)
    if verdict.ok:
        return None
    why = verdict.why
    if f.field in pii and why not in ("is missing", "is present"):
        why = "does not meet it"
    # Built without validation: every field is typed and bounded here, and a lead meets
    # tens of these per routing (validating them cost a quarter of screening).
    return Rejection.model_construct(
        code=RejectionCode.FILTER,
        detail=f"filter '{f.describe()}' of buyer {buyer.name}: {f.field} {why}"[:1000],
        buyer_id=buyer.buyer_id,
        field=f.field,
    )


def _closed(buyer: BuyerState, now: dt.datetime) -> Rejection | None:
    if buyer.schedule is not None and open_window(buyer.schedule, buyer.timezone, now) is None:
        return Rejection(
            code=RejectionCode.SCHEDULE_CLOSED,
            detail=f"buyer {buyer.name} is closed at {describe_instant(now, buyer.timezone)}",
            buyer_id=buyer.buyer_id,
        )
    return None


def offer_price(buyer: BuyerState, now: dt.datetime, memo: ScreenMemo | None = None) -> Decimal:
    """The open schedule window's price if it names one, else the buyer's price."""
    if buyer.schedule is None:
        return buyer.price
    if memo is None:
        return _window_price(buyer, now)
    key = (memo.pin(buyer), "price", _minute(now))
    price = memo.verdicts.get(key)
    if price is None:
        price = memo.verdicts[key] = _window_price(buyer, now)
    assert isinstance(price, Decimal)
    return price


def _window_price(buyer: BuyerState, now: dt.datetime) -> Decimal:
    assert buyer.schedule is not None
    window = open_window(buyer.schedule, buyer.timezone, now)
    if window is not None and window.price is not None:
        return window.price
    return buyer.price
