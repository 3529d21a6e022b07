"""OHLC sanity of `daily_bar`: price order, positive prices, pct_chg and board price limits."""

import dagster as dg

from stocksync_dagster.checks.report import capped, md_table, rerun_hint, result
from stocksync_dagster.checks.scope import Scope
from stocksync_dagster.core.warehouse import Warehouse, health


def evaluate_ohlc_sanity(warehouse: Warehouse, scope: Scope) -> dg.AssetCheckResult:
    with warehouse.connect() as connection:
        bad = health.ohlc_violations(connection, scope.start, scope.end)
    if bad.empty:
        return result(True, "every bar is consistent", scope)
    hard = bad[bad["rule"].isin(health.OHLC_HARD_RULES)]
    by_rule = bad["rule"].value_counts().rename("bars").rename_axis("rule").reset_index()
    metadata = {
        "bad_bars": len(bad),
        "impossible_bars": len(hard),
        "by_rule": md_table(by_rule),
        "day_list": capped(sorted(set(bad["trade_date"]))),
        "code_list": capped(sorted(set(bad["code"]))),
        "bars": md_table(bad),
        "rerun": rerun_hint(bad["trade_date"]),
    }
    first = bad.iloc[0]
    summary = f"{len(bad)} bad bars, e.g. {first['code']} {first['trade_date']}: {first['rule']}"
    # Impossible prices are corrupt data; limit / pct_chg breaches may be rules we do not model
    # (ST status history, limit reforms, resumption days), so they only warn.
    severity = dg.AssetCheckSeverity.ERROR if len(hard) else dg.AssetCheckSeverity.WARN
    return result(False, summary, scope, metadata, severity)
