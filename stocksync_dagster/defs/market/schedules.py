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


# The cron strings are fixed when the definitions load (STOCKSYNC_NIGHTLY_AT / _CATCHUP_AT).
_times = current_settings()


@dg.schedule(
    name="nightly_sync_schedule",
    cron_schedule=_cron(_times.nightly_at, "1-5"),
    execution_timezone=TIMEZONE,
    job=nightly_sync,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="After the close on each trading day (STOCKSYNC_NIGHTLY_AT, Asia/Shanghai): "
    "that day's calendar, stock list, daily_bars and adj_factor, re-fetching the previous "
    "STOCKSYNC_LOOKBACK_DAYS trading days so late factors heal. Skips holidays and days "
    "already materialized or running.",
)
def nightly_sync_schedule(
    context: dg.ScheduleEvaluationContext,
) -> dg.RunRequest | dg.SkipReason:
    """After the close on each trading day: that day's calendar, stock list and market data."""
    settings = current_settings()
    day = context.scheduled_execution_time.astimezone(trading_calendar.SHANGHAI).date()
    if not trading_calendar.is_trading_day(day):
        return dg.SkipReason(f"{day} ({day:%A}) is not a trading day")
    if day < settings.start_date:
        return dg.SkipReason(f"{day} is before STOCKSYNC_START_DATE {settings.start_date}")
    return _request(context, day, settings.lookback_days, f"nightly:{day}", "nightly")


@dg.schedule(
    name="morning_catch_up_schedule",
    cron_schedule=_cron(_times.catchup_at, "*"),
    execution_timezone=TIMEZONE,
    job=nightly_sync,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Each morning (STOCKSYNC_CATCHUP_AT, Asia/Shanghai): syncs the last closed "
    "trading day again if it is missing or its run failed, e.g. after a night the daemon "
    "was down. Skips it when it is materialized or running.",
)
def morning_catch_up_schedule(
    context: dg.ScheduleEvaluationContext,
) -> dg.RunRequest | dg.SkipReason:
    """Each morning: sync the last closed trading day if it is missing or failed."""
    settings = current_settings()
    now = context.scheduled_execution_time.astimezone(trading_calendar.SHANGHAI)
    day = trading_calendar.last_settled_trading_day(now)
    if day < settings.start_date:
        return dg.SkipReason(f"{day} is before STOCKSYNC_START_DATE {settings.start_date}")
    run_key = f"catch-up:{day}:{now.date()}"
    return _request(context, day, settings.lookback_days, run_key, "catch-up")
