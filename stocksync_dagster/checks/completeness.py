"""Completeness per day: the expected universe (listed minus suspended) vs stocks with a bar."""

import dagster as dg
import pandas as pd

from stocksync_dagster.checks.report import MAX_LISTED, capped, md_table, rerun_hint, result
from stocksync_dagster.checks.scope import Scope
from stocksync_dagster.core.warehouse import Warehouse, health
from stocksync_dagster.core.warehouse.schema import daily_bar

DEFAULT_MIN_SHARE = 0.99
MAX_DAYS_DETAILED = 20


def evaluate_completeness(
    warehouse: Warehouse, scope: Scope, min_share: float = DEFAULT_MIN_SHARE
) -> dg.AssetCheckResult:
    """ERROR when a day holds less than `min_share` of its expected stocks; WARN for any
    other day missing an expected stock. Suspended stocks are expected absent."""
    with warehouse.connect() as connection:
        scope = scope.within(*health.date_bounds(connection, daily_bar))
        if scope.start is None:
            return result(True, "daily_bar is empty: nothing to check", scope)
        days = health.completeness(connection, scope.start, scope.end)
        short = days[days["missing"] > 0]
        missing = {
            day: health.missing_codes(connection, day)
            for day in short["trade_date"].head(MAX_DAYS_DETAILED)
        }
    failing = days[days["share"] < min_share]
    per_day = days.assign(share=days["share"].round(4)).sort_values(["share", "trade_date"])
    metadata: dict[str, object] = {
        "days_checked": len(days),
        "min_share": min_share,
        "lowest_share": round(float(days["share"].min()), 4) if len(days) else 1.0,
        "failing_days": len(failing),
        "incomplete_days": len(short),
        "expected": int(days["expected"].sum()),
        "present": int(days["present"].sum()),
        "suspended": int(days["suspended"].sum()),
        "missing": int(days["missing"].sum()),
        "days_by_share": md_table(per_day),
    }
    if short.empty:
        return result(
            True,
            f"{len(days)} days complete: every listed, not suspended stock has a bar",
            scope,
            metadata,
        )
    detail = pd.DataFrame(
        {
            "trade_date": list(missing),
            "missing": [len(codes) for codes in missing.values()],
            "codes": [capped(codes, MAX_LISTED) for codes in missing.values()],
        }
    )
    metadata["incomplete_day_list"] = capped(short["trade_date"])
    metadata["failing_day_list"] = capped(failing["trade_date"])
    metadata["missing_codes"] = md_table(detail)
    metadata["rerun"] = rerun_hint(short["trade_date"])
    worst = short.sort_values("share").head(5)
    summary = ", ".join(
        f"{r.trade_date} {r.present}/{r.expected} ({r.missing} missing)"
        for r in worst.itertuples(index=False)
    )
    if failing.empty:
        return result(
            False,
            f"{len(short)} days miss expected stocks (all at or above {min_share:.0%}): {summary}",
            scope,
            metadata,
            severity=dg.AssetCheckSeverity.WARN,
        )
    return result(
        False,
        f"{len(failing)} days below {min_share:.0%} of their expected stocks: {summary}",
        scope,
        metadata,
    )
