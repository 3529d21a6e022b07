"""The SSE/SZSE trading calendar: one source of truth for partitions, schedules and the demo market.

Holidays come from the maintained `exchange_calendars` XSHG calendar plus the closures the
source publishes (the `trade_calendar` table), registered with `use_published_closures` when the
definitions load. A day is a trading day only if both say it is open; days after the package's
horizon with no published closure are treated as weekdays (trading days), and the source's own
calendar decides at run time (a closed day then materializes with zero rows).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from functools import lru_cache
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")
# Day D's data is final after the close; its partition key appears at this Shanghai time.
CLOSE_SETTLED_HOUR = 18
CALENDAR_FIRST_DAY = dt.date(2005, 1, 4)


_published_closed: frozenset[dt.date] = frozenset()


def use_published_closures(days: Iterable[dt.date]) -> None:
    """Also treat these weekdays as closed: holidays the source published (`trade_calendar`),
    e.g. a year the installed `exchange_calendars` does not know yet."""
    global _published_closed
    _published_closed = frozenset(days)


def published_closures() -> frozenset[dt.date]:
    """The closures registered with `use_published_closures`."""
    return _published_closed


@lru_cache(maxsize=1)
def _known_sessions() -> tuple[frozenset[dt.date], dt.date]:
    import exchange_calendars as xcals  # slow import (~0.8 s): only when first needed

    calendar = xcals.get_calendar("XSHG", start=CALENDAR_FIRST_DAY.isoformat())
    sessions = frozenset(ts.date() for ts in calendar.sessions)
    return sessions, calendar.last_session.date()


def calendar_last_known_day() -> dt.date:
    """Last day the maintained holiday calendar knows about."""
    return _known_sessions()[1]


def package_says_open(day: dt.date) -> bool:
    """What `exchange_calendars` alone says (weekdays past its horizon count as open)."""
    sessions, last_known = _known_sessions()
    if day < CALENDAR_FIRST_DAY or day > last_known:
        return day.weekday() < 5
    return day in sessions


def is_trading_day(day: dt.date) -> bool:
    """True if the exchanges open on `day`: open per `exchange_calendars` and not a published
    closure (weekdays past the known calendar count as open)."""
    sessions, last_known = _known_sessions()
    if day in _published_closed:
        return False
    if day < CALENDAR_FIRST_DAY or day > last_known:
        return day.weekday() < 5
    return day in sessions


def trading_days(start: dt.date, end: dt.date) -> list[dt.date]:
    """Trading days in [start, end], ascending."""
    days = []
    day = start
    while day <= end:
        if is_trading_day(day):
            days.append(day)
        day += dt.timedelta(days=1)
    return days


def holidays(start: dt.date, end: dt.date) -> list[dt.date]:
    """Weekdays in [start, end] on which the exchanges are closed."""
    days = []
    day = start
    while day <= end:
        if day.weekday() < 5 and not is_trading_day(day):
            days.append(day)
        day += dt.timedelta(days=1)
    return days


def shanghai_now() -> dt.datetime:
    return dt.datetime.now(tz=SHANGHAI)


def last_settled_trading_day(now: dt.datetime | None = None) -> dt.date:
    """The latest trading day whose data is final at `now` (its close has settled)."""
    now = (now or shanghai_now()).astimezone(SHANGHAI)
    day = now.date()
    if now.hour < CLOSE_SETTLED_HOUR:
        day -= dt.timedelta(days=1)
    while not is_trading_day(day):
        day -= dt.timedelta(days=1)
    return day


def previous_trading_day(day: dt.date) -> dt.date:
    day -= dt.timedelta(days=1)
    while not is_trading_day(day):
        day -= dt.timedelta(days=1)
    return day


def parse_day(text: str) -> dt.date:
    """`YYYY-MM-DD` (or `YYYYMMDD`) -> date; raises ValueError with the offending text."""
    text = text.strip()
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise ValueError(f"{text!r} is not a date in YYYY-MM-DD form")
