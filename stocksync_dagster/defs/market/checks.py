"""Checks of daily_bars and adj_factor: one step per asset evaluates all of its checks.

Checks are unpartitioned and take `deps`, never inputs (nothing goes through an IO manager).
Run with their asset they scan the run's days; run alone they scan the whole history.
"""

import datetime as dt
from collections.abc import Iterator

import dagster as dg
import pydantic

from stocksync_dagster.checks import Evaluator, evaluate_selected
from stocksync_dagster.checks.calendar_gaps import evaluate_missing_days
from stocksync_dagster.checks.completeness import DEFAULT_MIN_SHARE, evaluate_completeness
from stocksync_dagster.checks.factors import evaluate_factor_consistency, evaluate_factor_coverage
from stocksync_dagster.checks.failures import evaluate_open_failures
from stocksync_dagster.checks.freshness import DEFAULT_DEADLINE, evaluate_freshness
from stocksync_dagster.checks.revisions import evaluate_old_revisions
from stocksync_dagster.checks.sanity import evaluate_ohlc_sanity
from stocksync_dagster.checks.scope import ALL_HISTORY, run_scope
from stocksync_dagster.checks.stock_basic import evaluate_bars_within_listing
from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.settings import current_settings
from stocksync_dagster.core.warehouse.schema import MARKET_TABLES
from stocksync_dagster.resources import WarehouseResource

DAILY_BARS = dg.AssetKey("daily_bars")
ADJ_FACTOR = dg.AssetKey("adj_factor")


class MarketChecksConfig(dg.Config):
    """Settings of a market asset's checks (editable in the Launchpad)."""

    full_history: bool = False
    """no_missing_trading_days: also count days from STOCKSYNC_START_DATE up to the first
    loaded day (history not yet backfilled) as missing. Off by default: those show as missing
    partitions in the UI and `stocksync status`; the check is about holes and lost rows."""
    deadline_hour: int = pydantic.Field(default=DEFAULT_DEADLINE.hour, ge=0, le=23)
    """fresh: hour (Shanghai time) by which a trading day's data must be in the warehouse;
    the nightly sync starts 18:30."""
    deadline_minute: int = pydantic.Field(default=DEFAULT_DEADLINE.minute, ge=0, le=59)
    """fresh: minute of the deadline."""


class DailyBarsChecksConfig(MarketChecksConfig):
    """Settings of the daily_bars checks (editable in the Launchpad)."""

    min_share: float = pydantic.Field(default=DEFAULT_MIN_SHARE, gt=0, le=1)
    """complete_per_day: a day fails (ERROR) below this share of its expected stocks (listed
    that day minus the source's suspensions) with a bar; any other missing stock is a WARN."""


def _history_specs(asset: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    """The checks both market assets have: missing days, open failures, freshness."""
    table = MARKET_TABLES[asset.to_user_string()].name
    return [
        dg.AssetCheckSpec(
            "no_missing_trading_days",
            asset=asset,
            additional_deps=["trade_calendar"],
            description=(
                "Every open day of trade_calendar, from the first loaded day (or "
                "STOCKSYNC_START_DATE with full_history) to the latest materialized day, has rows "
                f"in `{table}`. Scans the whole history with one SQL query."
            ),
        ),
        dg.AssetCheckSpec(
            "no_open_sync_failures",
            asset=asset,
            description=(
                f"No `sync_failure` row of {asset.to_user_string()} is open: WARN while "
                "pending/retrying (the repair sensor is on it), ERROR once abandoned (needs a "
                "person). Names days and codes."
            ),
        ),
        dg.AssetCheckSpec(
            "fresh",
            asset=asset,
            description=(
                f"`{table}` holds the latest trading day once its deadline (default 20:00 "
                "Shanghai) has passed; WARN one day behind, ERROR more. Reads the warehouse, so an "
                "empty or deleted day is stale even if Dagster materialized it."
            ),
        ),
        dg.AssetCheckSpec(
            "no_old_history_revised",
            asset=asset,
            description=(
                f"No re-fetch changed `{table}` rows of days older than the look-back window "
                "(STOCKSYNC_LOOKBACK_DAYS trading days before the revision): WARN when the source "
                f"rewrote old history, naming the days; old and new values in `{table}_revision`. "
                "Scans the run's revisions (all revisions when run alone)."
            ),
        ),
    ]


def _history_evaluators(
    context: dg.AssetCheckExecutionContext,
    asset: dg.AssetKey,
    config: MarketChecksConfig,
    warehouse: WarehouseResource,
) -> dict[dg.AssetCheckKey, Evaluator]:
    name, table = asset.to_user_string(), MARKET_TABLES[asset.to_user_string()]
    deadline = dt.time(config.deadline_hour, config.deadline_minute)
    return {
        dg.AssetCheckKey(asset, "no_missing_trading_days"): lambda: evaluate_missing_days(
            warehouse.get(),
            table,
            current_settings().start_date,
            context.instance.get_materialized_partitions(asset),
            config.full_history,
        ),
        dg.AssetCheckKey(asset, "no_open_sync_failures"): lambda: evaluate_open_failures(
            warehouse.get(), name
        ),
        dg.AssetCheckKey(asset, "fresh"): lambda: evaluate_freshness(
            warehouse.get(), table, trading_calendar.shanghai_now(), deadline
        ),
        dg.AssetCheckKey(asset, "no_old_history_revised"): lambda: evaluate_old_revisions(
            warehouse.get(),
            table,
            current_settings().lookback_days,
            None if run_scope(context) == ALL_HISTORY else context.op_execution_context.run_id,
        ),
    }


@dg.multi_asset_check(
    specs=[
        *_history_specs(DAILY_BARS),
        dg.AssetCheckSpec(
            "complete_per_day",
            asset=DAILY_BARS,
            additional_deps=["stock_basic"],
            description=(
                "Each day of the run (all history when run alone) has a bar for every expected "
                "stock: listed that day (stock_basic) and not suspended (table suspension). "
                "ERROR below `min_share` (default 99%), WARN for fewer missing; per day expected "
                "/ present / suspended / missing counts and the missing codes (first 50)."
            ),
        ),
        dg.AssetCheckSpec(
            "ohlc_sanity",
            asset=DAILY_BARS,
            blocking=True,
            additional_deps=["stock_basic"],
            description=(
                "Bars of the run: prices > 0, low <= open, close <= high, volume and amount >= 0 "
                "(ERROR, blocking); pct_chg matches close/pre_close and moves stay within the "
                "board's limit (10% main, 20% ChiNext/STAR, 30% BJ, 5% ST; first 5 days after "
                "listing exempt) (WARN)."
            ),
        ),
        dg.AssetCheckSpec(
            "bars_within_listing_dates",
            asset=DAILY_BARS,
            additional_deps=["stock_basic"],
            description=(
                "No bar before a stock's list_date or after its delist_date, and none for a code "
                "stock_basic does not know (WARN). One GROUP BY over all history."
            ),
        ),
    ],
    can_subset=True,
)
def daily_bars_checks(
    context: dg.AssetCheckExecutionContext,
    config: DailyBarsChecksConfig,
    warehouse: WarehouseResource,
) -> Iterator[dg.AssetCheckResult]:
    """Every check of daily_bars, evaluated together in one step."""
    scope = run_scope(context)
    yield from evaluate_selected(
        context,
        {
            **_history_evaluators(context, DAILY_BARS, config, warehouse),
            dg.AssetCheckKey(DAILY_BARS, "complete_per_day"): lambda: evaluate_completeness(
                warehouse.get(), scope, config.min_share
            ),
            dg.AssetCheckKey(DAILY_BARS, "ohlc_sanity"): lambda: evaluate_ohlc_sanity(
                warehouse.get(), scope
            ),
            dg.AssetCheckKey(DAILY_BARS, "bars_within_listing_dates"): lambda: (
                evaluate_bars_within_listing(warehouse.get())
            ),
        },
    )


@dg.multi_asset_check(
    specs=[
        *_history_specs(ADJ_FACTOR),
        dg.AssetCheckSpec(
            "factor_coverage",
            asset=ADJ_FACTOR,
            additional_deps=["daily_bars"],
            description=(
                "Every bar of the run (all history when run alone) has an adj_factor, and no "
                "factor is <= 0. Names the days and codes to re-fetch."
            ),
        ),
        dg.AssetCheckSpec(
            "factor_consistency",
            asset=ADJ_FACTOR,
            additional_deps=["daily_bars"],
            description=(
                "A factor changes only where pre_close differs from the previous close (an "
                "ex-right day): ERROR for an unexplained jump, WARN for an ex-right day whose "
                "factor lags."
            ),
        ),
    ],
    can_subset=True,
)
def adj_factor_checks(
    context: dg.AssetCheckExecutionContext,
    config: MarketChecksConfig,
    warehouse: WarehouseResource,
) -> Iterator[dg.AssetCheckResult]:
    """Every check of adj_factor, evaluated together in one step."""
    scope = run_scope(context)
    yield from evaluate_selected(
        context,
        {
            **_history_evaluators(context, ADJ_FACTOR, config, warehouse),
            dg.AssetCheckKey(ADJ_FACTOR, "factor_coverage"): lambda: evaluate_factor_coverage(
                warehouse.get(), scope
            ),
            dg.AssetCheckKey(ADJ_FACTOR, "factor_consistency"): lambda: evaluate_factor_consistency(
                warehouse.get(), scope
            ),
        },
    )
