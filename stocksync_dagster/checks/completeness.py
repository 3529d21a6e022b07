"""Completeness per day: stocks listed that day (per `stock_basic`) vs stocks with a bar."""

import dagster as dg
import pandas as pd

from stocksync_dagster.checks.report import capped, md_table, rerun_hint, result
from stocksync_dagster.checks.scope import Scope
from stocksync_dagster.core.warehouse import Warehouse, health
from stocksync_dagster.core.warehouse.schema import daily_bar

MAX_DAYS_DETAILED = 20


def evaluate_completeness(
    warehouse: Warehouse, scope: Scope, min_share: float = 0.9
) -> dg.AssetCheckResult:
    with warehouse.connect() as connection:
        scope = scope.within(*health.date_bounds(connection, daily_bar))
        if scope.start is None:
            return result(True, "daily_bar is empty: nothing to check", scope)
        days = health.completeness(connection, scope.start, scope.end)
        failing = days[days["share"] < min_share]
        missing = {
            day: health.listed_without_bars(connection, day)
            for day in failing["trade_date"].head(MAX_DAYS_DETAILED)
        }
    shown = days.assign(share=days["share"].round(4)).sort_values("share")
    metadata: dict[str, object] = {
        "days_checked": len(days),
        "min_share": min_share,
        "lowest_share": round(float(days["share"].min()), 4) if len(days) else 1.0,
        "failing_days": len(failing),
        "days_by_share": md_table(shown),
    }
    if failing.empty:
        return result(
            True, f"{len(days)} days at or above {min_share:.0%} of listed stocks", scope, metadata
        )
    detail = pd.DataFrame(
        {
            "trade_date": list(missing),
            "missing": [len(codes) for codes in missing.values()],
            "codes": [capped(codes, 10) for codes in missing.values()],
        }
    )
    metadata["failing_day_list"] = capped(failing["trade_date"])
    metadata["missing_codes"] = md_table(detail)
    metadata["rerun"] = rerun_hint(failing["trade_date"])
    return result(
        False,
        f"{len(failing)} days below {min_share:.0%} of listed stocks: "
        f"{capped(failing['trade_date'], 10)}",
        scope,
        metadata,
    )
