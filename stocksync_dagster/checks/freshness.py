"""Freshness: the latest trading day is in the warehouse by a deadline after the close."""

import datetime as dt

import dagster as dg
import sqlalchemy as sa

from stocksync_dagster.checks.report import capped, rerun_hint, result
from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.warehouse import Warehouse, health
from stocksync_dagster.core.warehouse.schema import MARKET_TABLES
from stocksync_dagster.resources import WarehouseResource

DEFAULT_DEADLINE = "20:00"


class FreshnessConfig(dg.Config):
    deadline: str = DEFAULT_DEADLINE
    """Shanghai time (HH:MM) by which a trading day's data must be in the warehouse; the
    nightly sync starts 18:30."""


def expected_day(now: dt.datetime, deadline: dt.time) -> dt.date:
    """The latest trading day whose deadline has passed at `now`."""
    now = now.astimezone(trading_calendar.SHANGHAI)
    day = now.date() if now.time() >= deadline else now.date() - dt.timedelta(days=1)
    while not trading_calendar.is_trading_day(day):
        day -= dt.timedelta(days=1)
    return day


def evaluate_freshness(
    warehouse: Warehouse, table: sa.Table, now: dt.datetime, deadline: str = DEFAULT_DEADLINE
) -> dg.AssetCheckResult:
    """Pass when `table` has rows for the expected day; WARN one trading day behind, else ERROR."""
    due = expected_day(now, dt.time.fromisoformat(deadline))
    with warehouse.connect() as connection:
        latest = health.latest_day(connection, table)
    metadata: dict[str, object] = {
        "latest_day": str(latest),
        "expected_day": str(due),
        "deadline": f"{deadline} Asia/Shanghai",
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


def build_freshness_check(asset: str) -> dg.AssetChecksDefinition:
    table = MARKET_TABLES[asset]

    @dg.asset_check(
        asset=asset,
        name="fresh",
        description=(
            f"`{table.name}` holds the latest trading day once its deadline (default 20:00 "
            "Shanghai) has passed; WARN one day behind, ERROR more. Reads the warehouse, so an "
            "empty or deleted day is stale even if Dagster materialized it."
        ),
    )
    def fresh(config: FreshnessConfig, warehouse: WarehouseResource) -> dg.AssetCheckResult:
        return evaluate_freshness(
            warehouse.get(), table, trading_calendar.shanghai_now(), config.deadline
        )

    return fresh
