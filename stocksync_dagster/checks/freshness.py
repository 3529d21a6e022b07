"""Freshness: the latest trading day is in the warehouse by a deadline after the close."""

import datetime as dt

import dagster as dg
import sqlalchemy as sa

from stocksync_dagster.checks.report import capped, rerun_hint, result
from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.warehouse import Warehouse, health

DEFAULT_DEADLINE = dt.time(20, 0)
"""Shanghai time by which a trading day's data must be in the warehouse; the nightly sync
starts 18:30."""


def expected_day(now: dt.datetime, deadline: dt.time) -> dt.date:
    """The latest trading day whose deadline has passed at `now`."""
    now = now.astimezone(trading_calendar.SHANGHAI)
    day = now.date() if now.time() >= deadline else now.date() - dt.timedelta(days=1)
    while not trading_calendar.is_trading_day(day):
        day -= dt.timedelta(days=1)
    return day


def evaluate_freshness(
    warehouse: Warehouse, table: sa.Table, now: dt.datetime, deadline: dt.time = DEFAULT_DEADLINE
) -> dg.AssetCheckResult:
    """Pass when `table` has rows for the expected day; WARN one trading day behind, else ERROR."""
    due = expected_day(now, deadline)
    with warehouse.connect() as connection:
        latest = health.latest_day(connection, table)
    metadata: dict[str, object] = {
        "latest_day": str(latest),
        "expected_day": str(due),
        "deadline": f"{deadline:%H:%M} Asia/Shanghai",
        "checked_at": now.astimezone(trading_calendar.SHANGHAI).isoformat(timespec="minutes"),
    }
    if latest is not None and latest >= due:
        return result(True, f"{table.name} has {latest} (due: {due})", None, metadata)
    first_missing = latest + dt.timedelta(days=1) if latest else due
    behind = trading_calendar.trading_days(first_missing, due)
    metadata["trading_days_behind"] = len(behind)
    metadata["missing_day_list"] = capped(behind)
    metadata["rerun"] = rerun_hint(behind)
    severity = dg.AssetCheckSeverity.WARN if len(behind) == 1 else dg.AssetCheckSeverity.ERROR
    return result(
        False,
        f"{table.name} is {len(behind)} trading days behind: latest {latest}, due {due}",
        None,
        metadata,
        severity,
    )
