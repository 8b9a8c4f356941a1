"""Hours of operation: whether a buyer is open at an instant, in its own time zone."""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo

from lx_schemas.rules import Schedule, ScheduleWindow, Weekday

_DAYS = (
    Weekday.MON,
    Weekday.TUE,
    Weekday.WED,
    Weekday.THU,
    Weekday.FRI,
    Weekday.SAT,
    Weekday.SUN,
)


@functools.lru_cache(maxsize=512)
def zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def local(now: dt.datetime, timezone: str) -> dt.datetime:
    """``now`` (aware) as wall-clock time in ``timezone``."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(zone(timezone))


def open_window(schedule: Schedule, timezone: str, now: dt.datetime) -> ScheduleWindow | None:
    """The first window open at ``now`` (start inclusive, end exclusive), or None."""
    here = local(now, timezone)
    day = _DAYS[here.weekday()]
    hhmm = here.strftime("%H:%M")
    for window in schedule.windows:
        # Zero-padded "HH:MM" strings order as times do, and "24:00" after all of them.
        if day in window.days and window.start <= hhmm < window.end:
            return window
    return None


def describe_instant(now: dt.datetime, timezone: str) -> str:
    """``Tue 21:14 America/New_York``: how a closed buyer's reason names the moment."""
    return f"{local(now, timezone).strftime('%a %H:%M')} {timezone}"
