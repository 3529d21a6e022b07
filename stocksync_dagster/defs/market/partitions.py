"""Trading-day partitions: one key per SSE/SZSE trading day, available from 18:00 Shanghai time.

Dagster's daily partitions run in the `Etc/GMT-14` (UTC+14) time zone on purpose: midnight
there is 18:00 of the previous day in Shanghai, so key D's window is [D-1 18:00, D 18:00)
Shanghai time and key D appears on D's evening, after the close, never earlier. Weekends are
excluded by a cron exclusion and holidays by date: those of `exchange_calendars` plus the
closed weekdays of the warehouse's `trade_calendar` (what the source published), read once
when the definitions load. No key is ever in the future, including during holidays. The UI
shows windows in that zone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import dagster as dg

from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.settings import current_settings
from stocksync_dagster.core.warehouse.published_calendar import published_closed_weekdays

PARTITION_TIMEZONE = "Etc/GMT-14"  # UTC+14: its midnight is 18:00 in Asia/Shanghai
WEEKENDS = "0 0 * * 6,0"


def trading_day_partitions(
    start_date: dt.date, published_closures: Iterable[dt.date] = ()
) -> dg.DailyPartitionsDefinition:
    """Partitions for every trading day from `start_date` to the last settled one.

    `published_closures`: weekdays the source's calendar marks closed (e.g. holidays of a year
    `exchange_calendars` does not know yet); they are excluded too.
    """
    extra = sorted(set(published_closures))
    horizon = max(
        trading_calendar.calendar_last_known_day(), dt.date.today(), *extra[-1:]
    ) + dt.timedelta(days=1)
    closed = set(trading_calendar.holidays(start_date, horizon)) | {
        d for d in extra if d >= start_date
    }
    excluded_holidays = [dt.datetime(day.year, day.month, day.day) for day in sorted(closed)]
    return dg.DailyPartitionsDefinition(
        start_date=start_date.isoformat(),
        timezone=PARTITION_TIMEZONE,
        fmt="%Y-%m-%d",
        exclusions=[WEEKENDS, *excluded_holidays],
    )


def keys_to_dates(keys: list[str]) -> list[dt.date]:
    return [dt.date.fromisoformat(k) for k in keys]


def _load_published_closures() -> list[dt.date]:
    """The source's closures from the warehouse (read-only), registered for the whole calendar."""
    settings = current_settings()
    days = published_closed_weekdays(settings.database_url, settings.start_date)
    trading_calendar.use_published_closures(days)
    return days


trading_days = trading_day_partitions(current_settings().start_date, _load_published_closures())
"""The partitions of `daily_bars` and `adj_factor`: STOCKSYNC_START_DATE to the last settled day."""
