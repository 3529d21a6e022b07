"""Trading-day schedules: the nightly sync, its second evening try and the morning catch-up."""

import datetime as dt
from collections.abc import Mapping, Sequence

import dagster as dg

from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.settings import current_settings
from stocksync_dagster.defs.market.jobs import (
    TRIGGER_TAG,
    Status,
    describe_day,
    market_asset_names,
    market_run_config,
    market_status,
    nightly_sync,
    range_tags,
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


def _that_trading_day(
    context: dg.ScheduleEvaluationContext, trigger: str
) -> dg.RunRequest | dg.SkipReason:
    """The tick's own day, if it is a trading day from STOCKSYNC_START_DATE on and needs a run."""
    settings = current_settings()
    day = context.scheduled_execution_time.astimezone(trading_calendar.SHANGHAI).date()
    if not trading_calendar.is_trading_day(day):
        return dg.SkipReason(f"{day} ({day:%A}) is not a trading day")
    if day < settings.start_date:
        return dg.SkipReason(f"{day} is before STOCKSYNC_START_DATE {settings.start_date}")
    return _request(context, day, settings.lookback_days, f"{trigger}:{day}", trigger)


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
    return _that_trading_day(context, "nightly")


@dg.schedule(
    name="evening_retry_schedule",
    cron_schedule=_cron(_times.retry_at, "1-5"),
    execution_timezone=TIMEZONE,
    job=nightly_sync,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="The second evening try (STOCKSYNC_RETRY_AT, default 22:00 Asia/Shanghai, "
    "trading days): syncs that day again, like the nightly run, only if it is still missing or "
    "its run failed. Skips, saying why, a holiday or a day already materialized or running.",
)
def evening_retry_schedule(
    context: dg.ScheduleEvaluationContext,
) -> dg.RunRequest | dg.SkipReason:
    """The second evening try: that trading day again if still missing or failed."""
    return _that_trading_day(context, "evening-retry")


def catch_up_ranges(
    keys: Sequence[str], statuses: Mapping[str, Mapping[str, Status]]
) -> tuple[list[tuple[str, str]], list[str]]:
    """Consecutive runs of keys needing a sync, as (first, last); and why the others are skipped."""
    ranges: list[list[str]] = []
    skipped = []
    previous_needed = False
    for key in keys:
        reason = describe_day(statuses, key)
        if reason:
            skipped.append(reason)
            previous_needed = False
            continue
        if previous_needed:
            ranges[-1].append(key)
        else:
            ranges.append([key])
        previous_needed = True
    return [(r[0], r[-1]) for r in ranges], skipped


@dg.schedule(
    name="morning_catch_up_schedule",
    cron_schedule=_cron(_times.catchup_at, "*"),
    execution_timezone=TIMEZONE,
    job=nightly_sync,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Each morning (STOCKSYNC_CATCHUP_AT, default 08:00 Asia/Shanghai): every "
    "trading day of the last STOCKSYNC_CATCHUP_DAYS (default 10) that is missing or whose run "
    "failed is synced again, as one daily_bars + adj_factor range run per stretch of "
    "consecutive days, e.g. after nights the daemon was down. Days already materialized or "
    "running are skipped, and the tick says so.",
)
def morning_catch_up_schedule(
    context: dg.ScheduleEvaluationContext,
) -> list[dg.RunRequest] | dg.SkipReason:
    """Each morning: range runs for the missing or failed days of the last N trading days."""
    settings = current_settings()
    now = context.scheduled_execution_time.astimezone(trading_calendar.SHANGHAI)
    keys = trading_days.get_partition_keys(current_time=now)[-settings.catchup_days :]
    keys = [k for k in keys if k >= settings.start_date.isoformat()]
    if not keys:
        return dg.SkipReason(f"no trading day since STOCKSYNC_START_DATE {settings.start_date}")
    ranges, skipped = catch_up_ranges(keys, market_status(context.instance, trading_days, keys))
    window = f"last {len(keys)} trading days ({keys[0]}..{keys[-1]})"
    if not ranges:
        return dg.SkipReason(f"{window}: nothing to catch up; {'; '.join(skipped)}")
    if skipped:
        context.log.info(f"{window}: skipping {'; '.join(skipped)}")
    assets = [dg.AssetKey(name) for name in market_asset_names()]
    return [
        dg.RunRequest(
            run_key=f"catch-up:{first}:{last}:{now.date()}",
            asset_selection=assets,
            tags={**range_tags(first, last), TRIGGER_TAG: "catch-up"},
        )
        for first, last in ranges
    ]
