"""Checks of the reference assets: the security master the market checks rely on."""

import dagster as dg

from stocksync_dagster.checks.stock_basic import evaluate_stock_basic_integrity
from stocksync_dagster.resources import WarehouseResource


@dg.asset_check(asset="stock_basic", name="stock_basic_integrity", blocking=True)
def stock_basic_integrity(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    """Unique codes in 600000.SH form, exchange matching the suffix, board matching the
    code, list_date <= delist_date. Blocking: the market checks trust this table."""
    return evaluate_stock_basic_integrity(warehouse.get())
