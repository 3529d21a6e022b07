"""The trading calendar the source published, read from the warehouse without changing it.

Read when the definitions load, so it never creates a database or a file: a warehouse that does
not exist yet, or has no `trade_calendar`, simply publishes nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import sqlalchemy as sa

from stocksync_dagster.core.warehouse.schema import trade_calendar

log = logging.getLogger(__name__)


def _to_date(value: object) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value)[:10])


def published_closed_weekdays(url: str, since: dt.date) -> list[dt.date]:
    """Weekdays on or after `since` that `trade_calendar` marks closed; [] when unreadable."""
    parsed = sa.make_url(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite and not (parsed.database and Path(parsed.database).exists()):
        return []  # never create the file: there is nothing published yet
    # a server that does not answer must not hold up loading the definitions
    connect_args = {} if sqlite else {"connect_timeout": 5}
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            if not sa.inspect(connection).has_table(trade_calendar.name):
                return []
            c = trade_calendar.c
            rows = connection.execute(
                sa.select(c.cal_date).where(~c.is_open, c.cal_date >= since)
            ).scalars()
            return sorted(d for d in map(_to_date, rows) if d.weekday() < 5)
    except sa.exc.SQLAlchemyError as exc:
        log.warning(
            "trade_calendar could not be read at load (%s); partitions use exchange_calendars "
            "only until the next load",
            type(exc).__name__,
        )
        return []
    finally:
        engine.dispose()
