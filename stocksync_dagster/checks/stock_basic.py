"""Security master integrity, and bars only while a stock is listed."""

import dagster as dg

from stocksync_dagster.checks.report import capped, md_table, result
from stocksync_dagster.core.warehouse import Warehouse, health
from stocksync_dagster.core.warehouse.schema import stock_basic

UNKNOWN_CODE = "not in stock_basic"


def evaluate_stock_basic_integrity(warehouse: Warehouse) -> dg.AssetCheckResult:
    with warehouse.connect() as connection:
        problems = health.stock_basic_problems(connection)
        total = health.row_count(connection, stock_basic)
    if total == 0:
        return result(False, "stock_basic is empty: materialize stock_basic")
    if problems.empty:
        return result(True, f"{total} stocks, all consistent", None, {"stocks": total})
    metadata = {
        "stocks": total,
        "bad_stocks": problems["code"].nunique(),
        "code_list": capped(sorted(set(problems["code"]))),
        "problems": md_table(problems),
    }
    first = problems.iloc[0]
    return result(
        False,
        f"{problems['code'].nunique()} bad stocks, e.g. {first['code']}: {first['problem']}",
        None,
        metadata,
    )


def evaluate_bars_within_listing(warehouse: Warehouse) -> dg.AssetCheckResult:
    with warehouse.connect() as connection:
        bad = health.bars_outside_listing(connection)
    if bad.empty:
        return result(True, "every bar is within its stock's listing period")
    metadata = {
        "bad_bars": int(bad["bars"].sum()),
        "code_list": capped(sorted(set(bad["code"]))),
        "codes": md_table(bad),
    }
    first = bad.iloc[0]
    # Bars of a code stock_basic does not know yet (a stale master) only warn.
    only_unknown = (bad["problem"] == UNKNOWN_CODE).all()
    severity = dg.AssetCheckSeverity.WARN if only_unknown else dg.AssetCheckSeverity.ERROR
    return result(
        False,
        f"{int(bad['bars'].sum())} bars outside the listing period of {bad['code'].nunique()} "
        f"stocks, e.g. {first['code']} {first['problem']} "
        f"({first['first_day']}..{first['last_day']})",
        None,
        metadata,
        severity,
    )
