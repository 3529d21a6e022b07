"""`suspension`: the (code, day) pairs a source said were suspended, replaced per synced day."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pandas as pd
import sqlalchemy as sa

from stocksync_dagster.core.warehouse.schema import suspension


def replace_suspensions(
    connection: sa.Connection,
    frame: pd.DataFrame,
    days: Sequence[dt.date],
    codes: Sequence[str] | None,
    source: str,
) -> int:
    """Make `suspension` on `days` (only `codes`, if given) equal to `frame`; returns rows."""
    if not days:
        return 0
    delete = sa.delete(suspension).where(suspension.c.trade_date.in_(list(days)))
    if codes is not None:
        delete = delete.where(suspension.c.code.in_(list(codes)))
    connection.execute(delete)
    wanted = set(days)
    labels = frame["source"] if "source" in frame.columns else [source] * len(frame)
    found = {
        (code, day): label
        for code, day, label in zip(frame["code"], frame["trade_date"], labels, strict=True)
    }  # a frame's own `source` column (a fallback source's union) wins over `source`
    rows = [
        {"code": code, "trade_date": day, "source": label}
        for (code, day), label in found.items()
        if day in wanted and (codes is None or code in codes)
    ]
    if rows:
        connection.execute(sa.insert(suspension), rows)
    return len(rows)


def delete_other_codes(
    connection: sa.Connection,
    days: Sequence[dt.date],
    codes: Sequence[str],
    table: sa.Table = suspension,
) -> int:
    """Delete the rows of `table` (a per-(code, trade_date) table: `suspension`,
    `daily_status`) on `days` of stocks not in `codes`; returns rows deleted.

    A range sync that replaced the table stock batch by stock batch calls it last, so the
    days end up exactly as one whole-market replacement would leave them.
    """
    if not days:
        return 0
    delete = sa.delete(table).where(table.c.trade_date.in_(list(days)))
    if codes:
        delete = delete.where(table.c.code.not_in(list(codes)))
    return int(connection.execute(delete).rowcount or 0)


def suspended_per_day(
    connection: sa.Connection, start: dt.date, end: dt.date
) -> dict[dt.date, set[str]]:
    """Suspended codes per day in [start, end]."""
    c = suspension.c
    result: dict[dt.date, set[str]] = {}
    for code, day in connection.execute(
        sa.select(c.code, c.trade_date).where(c.trade_date.between(start, end))
    ):
        result.setdefault(
            day if isinstance(day, dt.date) else dt.date.fromisoformat(str(day)[:10]), set()
        ).add(code)
    return result
