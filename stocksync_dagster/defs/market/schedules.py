"""Trading-day schedules: the nightly sync after the close and the morning catch-up."""

import datetime as dt

import dagster as dg

from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.settings import current_settings
from stocksync_dagster.defs.market.jobs import (
    TRIGGER_TAG,
    describe_day,
    market_run_config,
    market_status,
    nightly_sync,
)
from stocksync_dagster.defs.market.partitions import trading_days

TIMEZONE = "Asia/Shanghai"


def _cron(at: dt.time, days: str) -> str:
    return f"{at.minute} {at.hour} * * {days}"


def _request(
    context: dg.ScheduleEvaluationContext,
    day: dt.date,
    lookback_days: int,
    run_key: str,
    trigger: str,
) -> dg.RunRequest | dg.SkipReason:
    key = day.isoformat()
    reason = describe_day(market_status(context.instance, trading_days, [key]), key)
    if reason:
        return dg.SkipReason(reason)
    return dg.RunRequest(
        run_key=run_key,
        partition_key=key,
        run_config=market_run_config(lookback_days=lookback_days),
        tags={TRIGGER_TAG: trigger},
    )


_settings = current_settings()


@dg.schedule(
    name="nightly_sync_schedule",
    cron_schedule=_cron(_settings.nightly_at, "1-5"),
    execution_timezone=TIMEZONE,
    job=nightly_sync,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def nightly_sync_schedule(context: dg.ScheduleEvaluationContext):
    """After the close on each trading day: that day's calendar, stock list and market data.

    Skips holidays and days already materialized. Re-fetches the previous
    STOCKSYNC_LOOKBACK_DAYS trading days too, so late adjustment factors heal.
    """
    day = context.scheduled_execution_time.astimezone(trading_calendar.SHANGHAI).date()
    if not trading_calendar.is_trading_day(day):
        return dg.SkipReason(f"{day} ({day:%A}) is not a trading day")
    if day < _settings.start_date:
        return dg.SkipReason(f"{day} is before STOCKSYNC_START_DATE {_settings.start_date}")
    return _request(context, day, _settings.lookback_days, f"nightly:{day}", "nightly")


@dg.schedule(
    name="morning_catch_up_schedule",
    cron_schedule=_cron(_settings.catchup_at, "*"),
    execution_timezone=TIMEZONE,
    job=nightly_sync,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def morning_catch_up_schedule(context: dg.ScheduleEvaluationContext):
    """Each morning: sync the last closed trading day if it is missing or failed."""
    now = context.scheduled_execution_time.astimezone(trading_calendar.SHANGHAI)
    day = trading_calendar.last_settled_trading_day(now)
    if day < _settings.start_date:
        return dg.SkipReason(f"{day} is before STOCKSYNC_START_DATE {_settings.start_date}")
    run_key = f"catch-up:{day}:{now.date()}"
    return _request(context, day, _settings.lookback_days, run_key, "catch-up")
