"""Read-only queries over the warehouse for the CLI, checks and sensors."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import sqlalchemy as sa

from stocksync_dagster.core.warehouse import schema

SUMMARY_TABLES = ("trade_calendar", "stock_basic", "daily_bar", "adj_factor", "sync_failure")
_DATE_COLUMNS = {
    "trade_calendar": "cal_date",
    "daily_bar": "trade_date",
    "adj_factor": "trade_date",
}


def table_summary(connection: sa.Connection) -> pd.DataFrame:
    """Rows, distinct days and date span of each warehouse table."""
    rows = []
    for name in SUMMARY_TABLES:
        table = schema.metadata.tables[name]
        date_column = _DATE_COLUMNS.get(name)
        if date_column:
            column = table.c[date_column]
            count, days, first, last = connection.execute(
                sa.select(
                    sa.func.count(),
                    sa.func.count(sa.distinct(column)),
                    sa.func.min(column),
                    sa.func.max(column),
                )
            ).one()
        else:
            count = connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            days, first, last = None, None, None
        rows.append({"table": name, "rows": count, "days": days, "first": first, "last": last})
    return pd.DataFrame(rows)


def failure_summary(connection: sa.Connection) -> pd.DataFrame:
    """sync_failure rows per asset and status."""
    table = schema.sync_failure
    result = connection.execute(
        sa.select(
            table.c.asset,
            table.c.status,
            sa.func.count(),
            sa.func.min(table.c.trade_date),
            sa.func.max(table.c.trade_date),
        )
        .group_by(table.c.asset, table.c.status)
        .order_by(table.c.asset, table.c.status)
    )
    return pd.DataFrame(result.all(), columns=["asset", "status", "rows", "first_day", "last_day"])


def latest_trade_date(connection: sa.Connection, table: sa.Table) -> dt.date | None:
    """The newest `trade_date` in a market table, or None when it is empty."""
    value = connection.execute(sa.select(sa.func.max(table.c.trade_date))).scalar_one()
    if value is None or isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])
