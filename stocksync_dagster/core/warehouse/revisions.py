"""The revision tables: previous values of market rows a re-fetch changed."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import sqlalchemy as sa

from stocksync_dagster.core.trading_calendar import SHANGHAI
from stocksync_dagster.core.warehouse.schema import REVISION_TABLES


def per_day(
    connection: sa.Connection,
    table: sa.Table,
    revised_at: dt.datetime,
    start: dt.date,
    end: dt.date,
) -> dict[dt.date, int]:
    """Revisions of `table` one write (stamped `revised_at`) made, per trade day."""
    revision = REVISION_TABLES[table.name]
    c = revision.c
    rows = connection.execute(
        sa.select(c.trade_date, sa.func.count())
        .where(c.trade_date.between(start, end), c.revised_at == revised_at)
        .group_by(c.trade_date)
    )
    return {_day(day): int(n) for day, n in rows}


def revision_days(
    connection: sa.Connection, table: sa.Table, run_id: str | None = None
) -> pd.DataFrame:
    """(trade_date, revised_on (Shanghai day), revisions, codes) of `table`'s revisions, only
    `run_id`'s if given."""
    revision = REVISION_TABLES[table.name]
    c = revision.c
    query = sa.select(c.trade_date, c.revised_at, c.code)
    if run_id is not None:
        query = query.where(c.run_id == run_id)
    frame = pd.DataFrame(
        connection.execute(query).all(), columns=["trade_date", "revised_at", "code"]
    )
    if frame.empty:
        return pd.DataFrame(columns=["trade_date", "revised_on", "revisions", "codes"])
    frame["trade_date"] = frame["trade_date"].map(_day)
    revised = pd.to_datetime(frame["revised_at"], utc=True).dt.tz_convert(SHANGHAI)
    frame["revised_on"] = revised.dt.date
    return (
        frame.groupby(["trade_date", "revised_on"])
        .agg(revisions=("code", "size"), codes=("code", lambda s: sorted(set(s))))
        .reset_index()
    )


def _day(value: object) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])
