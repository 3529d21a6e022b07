"""Checks of the reference assets: the security master the market checks rely on."""

import dagster as dg

from stocksync_dagster.checks.calendar_agreement import evaluate_calendar_agreement
from stocksync_dagster.checks.stock_basic import evaluate_stock_basic_integrity
from stocksync_dagster.core.settings import current_settings
from stocksync_dagster.resources import WarehouseResource


@dg.asset_check(asset="stock_basic", name="stock_basic_integrity", blocking=True)
def stock_basic_integrity(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    """Unique codes in 600000.SH form, exchange matching the suffix, board matching the
    code, list_date <= delist_date. Blocking: the market checks trust this table."""
    return evaluate_stock_basic_integrity(warehouse.get())


@dg.asset_check(asset="trade_calendar", name="calendar_matches_exchange_calendars")
def calendar_matches_exchange_calendars(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    """The source's calendar agrees with exchange_calendars on every day the package knows
    (WARN naming the days: those are not partitions), and every closure the source published
    past the package's horizon (e.g. next year's holidays) is excluded from the partitions
    loaded now (WARN until the code location is reloaded)."""
    return evaluate_calendar_agreement(warehouse.get(), current_settings().start_date)
