"""Asset checks: the health of every date and every stock, read from the warehouse with SQL.

One module per family; `build_asset_checks` returns them all for `Definitions`. Checks are
unpartitioned and take `deps`, never inputs, so nothing is loaded through an IO manager.
"""

import datetime as dt

import dagster as dg

from stocksync_dagster.checks.calendar_gaps import build_missing_days_check
from stocksync_dagster.checks.completeness import build_completeness_check
from stocksync_dagster.checks.factors import build_factor_checks
from stocksync_dagster.checks.failures import build_open_failures_check
from stocksync_dagster.checks.freshness import build_freshness_check
from stocksync_dagster.checks.sanity import build_ohlc_sanity_check
from stocksync_dagster.checks.stock_basic import build_stock_basic_checks

MARKET_ASSETS = ("daily_bars", "adj_factor")

__all__ = ["build_asset_checks"]


def build_asset_checks(start_date: dt.date) -> list[dg.AssetChecksDefinition]:
    """Every asset check; `start_date` is the first partition (STOCKSYNC_START_DATE)."""
    per_market_asset = [
        check
        for asset in MARKET_ASSETS
        for check in (
            build_missing_days_check(asset, start_date),
            build_open_failures_check(asset),
            build_freshness_check(asset),
        )
    ]
    return [
        *per_market_asset,
        build_completeness_check(),
        build_ohlc_sanity_check(),
        *build_factor_checks(),
        *build_stock_basic_checks(),
    ]
