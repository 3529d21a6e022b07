"""Trading-day schedules: the nightly sync after the close and the morning catch-up."""

import datetime as dt

import dagster as dg

from stocksync_dagster import trading_calendar
from stocksync_dagster.jobs import (
    MARKET_ASSETS,
    TRIGGER_TAG,
    AssetJob,
    describe_day,
    market_run_config,
    market_status,
)
from stocksync_dagster.settings import Settings

TIMEZONE = "Asia/Shanghai"


def _cron(at: dt.time, days: str) -> str:
    return f"{at.minute} {at.hour} * * {days}"


def _request(
    context: dg.ScheduleEvaluationContext,
    partitions: dg.PartitionsDefinition,
    day: dt.date,
    lookback_days: int,
    run_key: str,
    trigger: str,
) -> dg.RunRequest | dg.SkipReason:
    key = day.isoformat()
    reason = describe_day(market_status(context.instance, partitions, [key]), key)
    if reason:
        return dg.SkipReason(reason)
    return dg.RunRequest(
        run_key=run_key,
        partition_key=key,
        run_config=market_run_config(MARKET_ASSETS, lookback_days=lookback_days),
        tags={TRIGGER_TAG: trigger},
    )


def build_schedules(
    job: AssetJob, partitions: dg.PartitionsDefinition, settings: Settings
) -> list[dg.ScheduleDefinition]:
    """Nightly (STOCKSYNC_NIGHTLY_AT, weekdays) and catch-up (STOCKSYNC_CATCHUP_AT, daily)."""
    lookback = settings.lookback_days

    @dg.schedule(
        name="nightly_sync_schedule",
        cron_schedule=_cron(settings.nightly_at, "1-5"),
        execution_timezone=TIMEZONE,
        job=job,
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
        if day < settings.start_date:
            return dg.SkipReason(f"{day} is before STOCKSYNC_START_DATE {settings.start_date}")
        return _request(context, partitions, day, lookback, f"nightly:{day}", "nightly")

    @dg.schedule(
        name="morning_catch_up_schedule",
        cron_schedule=_cron(settings.catchup_at, "*"),
        execution_timezone=TIMEZONE,
        job=job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    def morning_catch_up_schedule(context: dg.ScheduleEvaluationContext):
        """Each morning: sync the last closed trading day if it is missing or failed."""
        now = context.scheduled_execution_time.astimezone(trading_calendar.SHANGHAI)
        day = trading_calendar.last_settled_trading_day(now)
        if day < settings.start_date:
            return dg.SkipReason(f"{day} is before STOCKSYNC_START_DATE {settings.start_date}")
        run_key = f"catch-up:{day}:{now.date()}"
        return _request(context, partitions, day, lookback, run_key, "catch-up")

    return [nightly_sync_schedule, morning_catch_up_schedule]
