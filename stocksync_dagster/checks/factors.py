"""Adjustment factors: one per bar, positive, and changing exactly on ex-right days."""

import dagster as dg
import pandas as pd

from stocksync_dagster.checks.report import capped, md_table, rerun_hint, result
from stocksync_dagster.checks.scope import Scope
from stocksync_dagster.core.warehouse import Warehouse, health

FACTOR_WITHOUT_EX_RIGHT = "factor changed but pre_close = previous close"


def _offenders(frame: pd.DataFrame) -> dict[str, object]:
    per_day = frame.groupby("trade_date").size().rename("stocks").reset_index()
    return {
        "day_list": capped(per_day["trade_date"]),
        "code_list": capped(sorted(set(frame["code"]))),
        "by_day": md_table(per_day),
        "rerun": rerun_hint(frame["trade_date"]),
    }


def evaluate_factor_coverage(warehouse: Warehouse, scope: Scope) -> dg.AssetCheckResult:
    with warehouse.connect() as connection:
        missing = health.bars_without_factor(connection, scope.start, scope.end)
        nonpositive = health.nonpositive_factors(connection, scope.start, scope.end)
    if missing.empty and nonpositive.empty:
        return result(True, "every bar has a positive factor", scope)
    bad = pd.concat(
        [
            missing.assign(problem="no factor"),
            nonpositive.drop(columns="adj_factor").assign(problem="factor <= 0"),
        ]
    )
    metadata = {
        "bars_without_factor": len(missing),
        "factors_not_positive": len(nonpositive),
        **_offenders(bad),
        "rows": md_table(bad.sort_values(["trade_date", "code"])),
    }
    parts = [f"{len(missing)} bars without a factor"] if len(missing) else []
    parts += [f"{len(nonpositive)} factors <= 0"] if len(nonpositive) else []
    example = bad.iloc[0]
    return result(
        False,
        f"{', '.join(parts)}, e.g. {example['code']} {example['trade_date']}",
        scope,
        metadata,
    )


def evaluate_factor_consistency(warehouse: Warehouse, scope: Scope) -> dg.AssetCheckResult:
    with warehouse.connect() as connection:
        bad = health.factor_mismatches(connection, scope.start, scope.end)
    if bad.empty:
        return result(True, "factors change exactly on ex-right days", scope)
    unexplained = bad[bad["problem"] == FACTOR_WITHOUT_EX_RIGHT]
    metadata = {
        "mismatches": len(bad),
        "factor_jumps_without_ex_right": len(unexplained),
        **_offenders(bad),
        "rows": md_table(bad),
    }
    example = bad.iloc[0]
    # A jump with no ex-right corrupts every adjusted price; an ex-right day whose factor has
    # not moved yet is usually a factor published late, which the nightly lookback re-fetches.
    severity = dg.AssetCheckSeverity.ERROR if len(unexplained) else dg.AssetCheckSeverity.WARN
    return result(
        False,
        f"{len(bad)} mismatches, e.g. {example['code']} {example['trade_date']}: "
        f"{example['problem']}",
        scope,
        metadata,
        severity,
    )
