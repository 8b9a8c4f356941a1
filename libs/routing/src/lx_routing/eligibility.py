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

from lx_schemas.events import BuyerState, FieldValue, Rejection, RejectionCode, Status

from lx_routing.filters import evaluate
from lx_routing.schedule import describe_instant, local, open_window


def screen(
    buyer: BuyerState,
    values: Mapping[str, FieldValue],
    now: dt.datetime,
    *,
    pii: Collection[str] = (),
) -> Rejection | None:
    """None when ``buyer`` may take a lead with ``values`` at ``now``; else why not."""
    if buyer.status != Status.ACTIVE:
        return Rejection(
            code=RejectionCode.BUYER_PAUSED,
            detail=f"buyer {buyer.name} is paused",
            buyer_id=buyer.buyer_id,
        )
    if buyer.filters:
        today = local(now, buyer.timezone).date()
        for f in buyer.filters:
            verdict = evaluate(f, values, today)
            if verdict.ok:
                continue
            why = verdict.why
            if f.field in pii and why not in ("is missing", "is present"):
                why = "does not meet it"
            return Rejection(
                code=RejectionCode.FILTER,
                detail=f"filter '{f.describe()}' of buyer {buyer.name}: {f.field} {why}"[:1000],
                buyer_id=buyer.buyer_id,
                field=f.field,
            )
    if buyer.schedule is not None and open_window(buyer.schedule, buyer.timezone, now) is None:
        return Rejection(
            code=RejectionCode.SCHEDULE_CLOSED,
            detail=f"buyer {buyer.name} is closed at {describe_instant(now, buyer.timezone)}",
            buyer_id=buyer.buyer_id,
        )
    return None


def offer_price(buyer: BuyerState, now: dt.datetime) -> Decimal:
    """The open schedule window's price if it names one, else the buyer's price."""
    if buyer.schedule is not None:
        window = open_window(buyer.schedule, buyer.timezone, now)
        if window is not None and window.price is not None:
            return window.price
    return buyer.price
