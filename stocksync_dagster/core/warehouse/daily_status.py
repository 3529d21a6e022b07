"""`daily_status`: each listed stock's ST and trading status per synced day, as it was then."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pandas as pd
import sqlalchemy as sa

from stocksync_dagster.core.warehouse.schema import TRADE_STATUSES, daily_status
from stocksync_dagster.core.warehouse.upsert import upsert_frame

_KEYS = ["code", "trade_date"]


def status_frame(
    bars: pd.DataFrame,
    suspensions: pd.DataFrame,
    st: pd.DataFrame | None,
    days: Sequence[dt.date],
    codes: Sequence[str] | None,
    source: str,
) -> pd.DataFrame:
    """One row per (code, day): `trading` for a stored bar, `suspended` for a suspension;
    `is_st` from the source's ST pairs (None when the source did not report ST)."""
    parts = [
        bars[_KEYS].assign(trade_status="trading"),
        suspensions[_KEYS].assign(trade_status="suspended"),
    ]
    frame = pd.concat(parts, ignore_index=True)
    frame = frame[frame["trade_date"].isin(set(days))]
    if codes is not None:
        frame = frame[frame["code"].isin(set(codes))]
    frame = frame.drop_duplicates(_KEYS, keep="first")  # a bar wins over a suspension
    if st is None:
        frame["is_st"] = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    else:
        flagged = st[_KEYS].drop_duplicates().assign(is_st=True)
        frame = frame.merge(flagged, on=_KEYS, how="left")
        frame["is_st"] = frame["is_st"].fillna(False).astype(bool)
    frame["source"] = source
    return frame.reset_index(drop=True)


def replace_statuses(
    connection: sa.Connection,
    frame: pd.DataFrame,
    days: Sequence[dt.date],
    codes: Sequence[str] | None,
) -> int:
    """Make `daily_status` on `days` (only `codes`, if given) equal to `frame`; returns rows."""
    if not days:
        return 0
    delete = sa.delete(daily_status).where(daily_status.c.trade_date.in_(list(days)))
    if codes is not None:
        delete = delete.where(daily_status.c.code.in_(list(codes)))
    connection.execute(delete)
    written = 0
    # one write per status: every text column of a part then has one width, which keeps
    # PostgreSQL on the fast (numpy-built) binary COPY path; the many trading rows first, so
    # a history load copies them straight into the table
    for status in TRADE_STATUSES:
        part = frame[frame["trade_status"] == status]
        if len(part):
            written += upsert_frame(connection, daily_status, part).written
    return written


def statuses(
    connection: sa.Connection, start: dt.date, end: dt.date, codes: Sequence[str] | None = None
) -> pd.DataFrame:
    """`daily_status` rows in [start, end] (only `codes`), by day then code."""
    c = daily_status.c
    query = sa.select(c.code, c.trade_date, c.is_st, c.trade_status).where(
        c.trade_date.between(start, end)
    )
    if codes is not None:
        query = query.where(c.code.in_(list(codes)))
    return pd.DataFrame(
        connection.execute(query.order_by(c.trade_date, c.code)).all(),
        columns=["code", "trade_date", "is_st", "trade_status"],
    )
