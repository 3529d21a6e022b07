"""Missing trading days: open days of `trade_calendar` on which a market table has no rows."""

import datetime as dt
from collections.abc import Collection

import dagster as dg
import sqlalchemy as sa

from stocksync_dagster.checks.report import capped, rerun_hint, result
from stocksync_dagster.checks.scope import Scope
from stocksync_dagster.core.warehouse import Warehouse, health


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
