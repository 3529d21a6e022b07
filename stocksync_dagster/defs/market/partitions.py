"""Trading-day partitions: one key per SSE/SZSE trading day, available from 18:00 Shanghai time.

Dagster's daily partitions run in the `Etc/GMT-14` (UTC+14) time zone on purpose: midnight
there is 18:00 of the previous day in Shanghai, so key D's window is [D-1 18:00, D 18:00)
Shanghai time and key D appears on D's evening, after the close, never earlier. Weekends are
excluded by a cron exclusion and holidays by date, from the maintained exchange trading_calendar.
No key is ever in the future, including during holidays. The UI shows windows in that zone.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.settings import current_settings

PARTITION_TIMEZONE = "Etc/GMT-14"  # UTC+14: its midnight is 18:00 in Asia/Shanghai
WEEKENDS = "0 0 * * 6,0"


def trading_day_partitions(start_date: dt.date) -> dg.DailyPartitionsDefinition:
    """Partitions for every trading day from `start_date` to the last settled one."""
    horizon = max(trading_calendar.calendar_last_known_day(), dt.date.today()) + dt.timedelta(
        days=1
    )
    excluded_holidays = [
        dt.datetime(day.year, day.month, day.day)
        for day in trading_calendar.holidays(start_date, horizon)
    ]
    return dg.DailyPartitionsDefinition(
        start_date=start_date.isoformat(),
        timezone=PARTITION_TIMEZONE,
        fmt="%Y-%m-%d",
        exclusions=[WEEKENDS, *excluded_holidays],
    )


def keys_to_dates(keys: list[str]) -> list[dt.date]:
    return [dt.date.fromisoformat(k) for k in keys]


trading_days = trading_day_partitions(current_settings().start_date)
"""The partitions of `daily_bars` and `adj_factor`: STOCKSYNC_START_DATE to the last settled day."""
