"""Missing trading days: open days of `trade_calendar` on which a market table has no rows."""

import datetime as dt
from collections.abc import Collection

import dagster as dg
import sqlalchemy as sa

from stocksync_dagster.checks.report import capped, rerun_hint, result
from stocksync_dagster.checks.scope import Scope
from stocksync_dagster.core.warehouse import Warehouse, health
from stocksync_dagster.core.warehouse.schema import MARKET_TABLES
from stocksync_dagster.resources import WarehouseResource


class MissingDaysConfig(dg.Config):
    full_history: bool = False
    """Also count days from STOCKSYNC_START_DATE up to the first loaded day (history not yet
    backfilled) as missing. Off by default: those show as missing partitions in the UI and
    `stocksync status`, and the gap sensor loads them; the check is about holes and lost rows."""


def evaluate_missing_days(
    warehouse: Warehouse,
    table: sa.Table,
    start_date: dt.date,
    materialized: Collection[str] = (),
    full_history: bool = False,
) -> dg.AssetCheckResult:
    """Open days without rows between the first loaded day (or `start_date`) and the latest
    materialized day; `materialized` are the asset's partition keys Dagster has materialized."""
    keys = sorted(dt.date.fromisoformat(k) for k in materialized)
    with warehouse.connect() as connection:
        first, last = health.date_bounds(connection, table)
        loaded = [d for d in (first, last, *keys[:1], *keys[-1:]) if d is not None]
        if not loaded:
            return result(True, f"{table.name} is empty: nothing materialized yet")
        # Rows deleted after materialization count too: Dagster's keys bound the scope as well.
        start = start_date if full_history else max(start_date, min(loaded))
        end = max(loaded)
        scope = Scope(start, end)
        calendar_days = health.open_days(connection, start, end)
        missing = health.missing_days(connection, table, start, end)
        not_backfilled = len(health.open_days(connection, start_date, start - dt.timedelta(days=1)))
    metadata: dict[str, object] = {
        "open_days_checked": len(calendar_days),
        "missing_days": len(missing),
        "not_backfilled_days": not_backfilled,
        "first_partition": str(start_date),
        "latest_materialized_day": str(end),
    }
    if not calendar_days:
        return result(
            False,
            f"trade_calendar has no open day in {scope.label}: materialize trade_calendar",
            scope,
            metadata,
            dg.AssetCheckSeverity.WARN,
        )
    if not missing:
        note = f"; {not_backfilled} earlier days not backfilled yet" if not_backfilled else ""
        return result(True, f"all {len(calendar_days)} open days have rows{note}", scope, metadata)
    metadata["missing_day_list"] = capped(missing)
    metadata["rerun"] = rerun_hint(missing)
    return result(
        False,
        f"{len(missing)} open days without {table.name} rows: {capped(missing, 10)}",
        scope,
        metadata,
    )


def build_missing_days_check(asset: str, start_date: dt.date) -> dg.AssetChecksDefinition:
    table = MARKET_TABLES[asset]

    @dg.asset_check(
        asset=asset,
        name="no_missing_trading_days",
        additional_deps=["trade_calendar"],
        description=(
            f"Every open day of trade_calendar, from the first loaded day (or STOCKSYNC_START_DATE "
            f"with full_history) to the latest materialized day, has rows in `{table.name}`. "
            "Scans the whole history with one SQL query."
        ),
    )
    def no_missing_trading_days(
        context: dg.AssetCheckExecutionContext,
        config: MissingDaysConfig,
        warehouse: WarehouseResource,
    ) -> dg.AssetCheckResult:
        materialized = context.instance.get_materialized_partitions(dg.AssetKey(asset))
        return evaluate_missing_days(
            warehouse.get(), table, start_date, materialized, config.full_history
        )

    return no_missing_trading_days
