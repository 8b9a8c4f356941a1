"""Cap periods: the bucket a moment falls in, in the buyer's time zone.

Hours, days, weeks (Monday to Sunday) and months are calendar periods on the buyer's
wall clock; ``total`` is one bucket for ever. A bucket is named by its start in UTC,
which is what the router's counter rows are keyed by (UTC, because aware datetimes of
one zone compare by wall time: the two 01:00 hours of a DST fall-back would be equal).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from lx_schemas.rules import Cap, CapPeriod

from lx_routing.schedule import local, zone

TOTAL_BUCKET = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def bucket_start(period: CapPeriod, timezone: str, now: dt.datetime) -> dt.datetime:
    """The start (UTC) of the ``period`` in ``timezone`` that contains ``now``."""
    if period is CapPeriod.TOTAL:
        return TOTAL_BUCKET
    here = local(now, timezone)
    if period is CapPeriod.HOUR:
        # Keeps ``fold``: the two 01:00 hours of a DST fall-back stay two buckets.
        return here.replace(minute=0, second=0, microsecond=0).astimezone(dt.UTC)
    day = here.date()
    if period is CapPeriod.WEEK:
        day = day - dt.timedelta(days=day.weekday())
    elif period is CapPeriod.MONTH:
        day = day.replace(day=1)
    return dt.datetime(day.year, day.month, day.day, tzinfo=zone(timezone)).astimezone(dt.UTC)


def amount(cap: Cap, price: Decimal) -> Decimal:
    """What one lead at ``price`` takes of ``cap``: 1 lead, or its price in USD."""
    return Decimal(1) if cap.max_leads is not None else price


def limit(cap: Cap) -> Decimal:
    if cap.max_leads is not None:
        return Decimal(cap.max_leads)
    assert cap.max_usd is not None
    return cap.max_usd
