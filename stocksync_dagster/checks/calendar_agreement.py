"""The source's trading calendar (`trade_calendar`) against `exchange_calendars` (the package)."""

import datetime as dt

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from stocksync_dagster.checks.report import capped, md_table, result
from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.warehouse import Warehouse
from stocksync_dagster.core.warehouse.schema import trade_calendar


def evaluate_calendar_agreement(warehouse: Warehouse, since: dt.date) -> dg.AssetCheckResult:
    """WARN for every day from `since` on which the source and the package disagree, and for
    closures past the package's horizon the loaded partitions do not exclude yet."""
    c = trade_calendar.c
    with warehouse.connect() as connection:
        rows = connection.execute(
            sa.select(c.cal_date, c.is_open).where(c.cal_date >= since).order_by(c.cal_date)
        ).all()
    horizon = trading_calendar.calendar_last_known_day()
    loaded = trading_calendar.published_closures()
    disagree, not_loaded = [], []
    for day, is_open in rows:
        day = day if isinstance(day, dt.date) else dt.date.fromisoformat(str(day)[:10])
        if day <= horizon and bool(is_open) != trading_calendar.package_says_open(day):
            disagree.append((day, "open" if is_open else "closed", "closed" if is_open else "open"))
        elif day > horizon and not is_open and day.weekday() < 5 and day not in loaded:
            not_loaded.append(day)
    metadata: dict[str, object] = {
        "days_compared": len(rows),
        "package_horizon": str(horizon),
        "published_closures_in_use": len(loaded),
    }
    if not disagree and not not_loaded:
        return result(
            True,
            f"{len(rows)} days agree with exchange_calendars (known to {horizon}); "
            f"{len(loaded)} later closures from trade_calendar excluded from partitions",
            metadata=metadata,
        )
    metadata["disagreements"] = md_table(
        pd.DataFrame(disagree, columns=["cal_date", "source", "exchange_calendars"])
    )
    metadata["closures_not_loaded"] = capped(not_loaded)
    parts = []
    if disagree:
        parts.append(
            f"{len(disagree)} days where the source and exchange_calendars disagree "
            f"({capped([d for d, *_ in disagree], 10)}); such days are not partitions"
        )
    if not_loaded:
        parts.append(
            f"{len(not_loaded)} closures past {horizon} published after the definitions loaded "
            f"({capped(not_loaded, 10)}): reload the code location to exclude them"
        )
    return result(False, "; ".join(parts), metadata=metadata, severity=dg.AssetCheckSeverity.WARN)
