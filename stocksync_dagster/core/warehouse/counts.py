"""Row counts the assets report: what the warehouse holds after a write, not what was fetched."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa


def rows_per_day(
    connection: sa.Connection, table: sa.Table, start: dt.date, end: dt.date
) -> dict[dt.date, int]:
    """Rows per `trade_date` in [start, end] (one GROUP BY); days without rows are absent."""
    column = table.c.trade_date
    result = connection.execute(
        sa.select(column, sa.func.count()).where(column.between(start, end)).group_by(column)
    )
    return {day: int(count) for day, count in result}


def row_count(connection: sa.Connection, table: sa.Table) -> int:
    """All rows of `table`."""
    return int(connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
