"""Old history rewritten: revisions of days older than the nightly look-back window (WARN)."""

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from stocksync_dagster.checks.report import capped, md_table, result
from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.warehouse import Warehouse, revisions


def old_revisions(frame: pd.DataFrame, lookback_days: int) -> pd.DataFrame:
    """Rows of `revisions.revision_days` whose trade day lies more than `lookback_days`
    trading days before the (Shanghai) day of the revision, with that distance as `age`."""
    if frame.empty:
        return frame.assign(age=pd.Series(dtype=int))
    ages = [
        len(trading_calendar.trading_days(day, revised)) - 1
        for day, revised in zip(frame["trade_date"], frame["revised_on"], strict=True)
    ]
    frame = frame.assign(age=ages)
    return frame[frame["age"] > lookback_days].reset_index(drop=True)


def evaluate_old_revisions(
    warehouse: Warehouse, table: sa.Table, lookback_days: int, run_id: str | None
) -> dg.AssetCheckResult:
    """WARN when a re-fetch changed rows of days beyond the look-back window."""
    scope = "this run" if run_id else "all history"
    with warehouse.connect() as connection:
        days = revisions.revision_days(connection, table, run_id)
    total = int(days["revisions"].sum()) if len(days) else 0
    old = old_revisions(days, lookback_days)
    metadata: dict[str, object] = {
        "scope": scope,
        "lookback_days": lookback_days,
        "revisions": total,
        "old_revisions": int(old["revisions"].sum()) if len(old) else 0,
    }
    if old.empty:
        return result(
            True,
            f"{total} revisions of `{table.name}` ({scope}), none older than the "
            f"{lookback_days}-trading-day look-back",
            None,
            metadata,
        )
    shown = old.assign(codes=[capped(c, 10) for c in old["codes"]])
    metadata["day_list"] = capped(sorted(set(old["trade_date"])))
    metadata["by_day"] = md_table(
        pd.DataFrame(shown[["trade_date", "revised_on", "age", "revisions", "codes"]])
    )
    metadata["where"] = f"old and new values in `{table.name}_revision`"
    return result(
        False,
        f"the source rewrote old history: {metadata['old_revisions']} rows of "
        f"{old['trade_date'].nunique()} days older than {lookback_days} trading days changed "
        f"({scope}): {capped(sorted(set(old['trade_date'])), 10)}",
        None,
        metadata,
        dg.AssetCheckSeverity.WARN,
    )
