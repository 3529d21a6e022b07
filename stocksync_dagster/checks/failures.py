"""Open sync failures: unresolved `sync_failure` rows (WARN while retried, ERROR once abandoned)."""

import dagster as dg
import pandas as pd

from stocksync_dagster.checks.report import capped, md_table, rerun_hint, result
from stocksync_dagster.core.warehouse import Warehouse, failures, health
from stocksync_dagster.core.warehouse.schema import WHOLE_DAY


def evaluate_open_failures(warehouse: Warehouse, asset: str) -> dg.AssetCheckResult:
    with warehouse.connect() as connection:
        rows = health.open_failures(connection, asset)
        newest = failures.newest_open_rows(connection, asset)  # the failure desk's first page
    if rows.empty:
        return result(True, f"no open sync failures for {asset}")
    by_status = rows["status"].value_counts()
    by_day = (
        rows.groupby("trade_date")
        .agg(
            stocks=("code", lambda c: "whole day" if WHOLE_DAY in set(c) else len(c)),
            status=("status", lambda s: ", ".join(sorted(set(s)))),
            codes=("code", lambda c: capped(sorted(c), 10)),
        )
        .reset_index()
    )
    abandoned = rows[rows["status"] == "abandoned"]
    metadata: dict[str, object] = {
        "open_rows": len(rows),
        **{
            f"{status}_rows": int(by_status.get(status, 0))
            for status in ("pending", "retrying", "abandoned")
        },
        "day_list": capped(sorted(set(rows["trade_date"]))),
        "code_list": capped(sorted(set(rows["code"]) - {WHOLE_DAY})),
        "by_day": md_table(by_day),
        "rerun": rerun_hint(rows["trade_date"]),
        "newest": md_table(newest.assign(error=newest["error"].str.slice(0, 80))),
        "failure_desk": failures.desk_commands(asset),
    }
    if abandoned.empty:
        return result(
            False,
            f"{len(rows)} failures being retried on {rows['trade_date'].nunique()} days "
            f"(the repair sensor retries them): {capped(sorted(set(rows['trade_date'])), 10)}",
            None,
            metadata,
            dg.AssetCheckSeverity.WARN,
        )
    metadata["abandoned"] = md_table(
        pd.DataFrame(abandoned[["trade_date", "code", "retries", "error"]])
    )
    return result(
        False,
        f"{len(abandoned)} failures abandoned after retries: "
        f"{capped(abandoned['trade_date'].astype(str) + ' ' + abandoned['code'], 10)}",
        None,
        metadata,
    )
