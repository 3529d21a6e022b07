"""The warehouse audited against the expected universe: lost rows become `sync_failure` rows.

Dagster records a partition as materialized even after its rows are deleted or truncated, so
partition status cannot find them; this reads the data. A day with no bar at all is recorded
as a whole-day failure (`code = '*'`), a day missing some expected stocks as one row per stock.
Pairs already open (pending, retrying, abandoned) are left alone: the audit never re-counts a
retry, and an abandoned pair stays abandoned. A pair found missing again after it was resolved
(a repair that "succeeded" without a bar, e.g. the source now says the day was closed) is
re-opened with its retry count kept and raised, so every loop ends `abandoned`. Pairs with a
rejected row (`sync_rejected_row`) are accounted for and not recorded.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field

import sqlalchemy as sa

from stocksync_dagster.core.sources.base import FetchFailure
from stocksync_dagster.core.warehouse import health
from stocksync_dagster.core.warehouse.failures import record_failures
from stocksync_dagster.core.warehouse.schema import WHOLE_DAY, sync_failure, sync_rejected_row

AUDIT_ERROR = "MissingInWarehouse"


@dataclass
class AuditReport:
    """What one audit found: days with no bar at all, and codes missing per short day."""

    empty_days: list[dt.date] = field(default_factory=list)
    short_days: dict[dt.date, list[str]] = field(default_factory=dict)
    recorded: int = 0

    @property
    def found(self) -> bool:
        return bool(self.empty_days or self.short_days)


def audit_daily_bars(
    connection: sa.Connection, asset: str, days: Iterable[dt.date], max_retries: int
) -> AuditReport:
    """Record in `sync_failure` every expected (code, day) of `days` absent from `daily_bar`."""
    wanted = set(days)
    report = AuditReport()
    if not wanted:
        return report
    figures = health.completeness(connection, min(wanted), max(wanted))
    figures = figures[figures["trade_date"].isin(wanted) & (figures["missing"] > 0)]
    for row in figures.itertuples(index=False):
        if row.present == 0:
            report.empty_days.append(row.trade_date)
        else:
            report.short_days[row.trade_date] = health.missing_codes(connection, row.trade_date)
    if not report.found:
        return report
    f, r = sync_failure.c, sync_rejected_row.c
    first = min([*report.empty_days, *report.short_days])
    last = max([*report.empty_days, *report.short_days])
    existing = {
        (_date(row.trade_date), row.code): row
        for row in connection.execute(
            sa.select(f.id, f.trade_date, f.code, f.status, f.retry_count).where(
                f.asset == asset, f.trade_date.between(first, last)
            )
        )
    }
    already = {key for key, row in existing.items() if row.status != "resolved"}
    already |= {
        (_date(day), code)
        for day, code in connection.execute(
            sa.select(r.trade_date, r.code).where(
                r.asset == asset, r.trade_date.between(first, last)
            )
        )
    }
    new: list[FetchFailure] = []
    for day in report.empty_days:
        if (day, WHOLE_DAY) not in already:
            new.append(_failure(None, day, "no bar at all"))
    for day, codes in report.short_days.items():
        if (day, WHOLE_DAY) in already:
            continue
        new += [
            _failure(code, day, "listed, not suspended, no bar")
            for code in codes
            if (day, code) not in already
        ]
    again = [x for x in new if (x.start, x.code or WHOLE_DAY) in existing]
    fresh = [x for x in new if (x.start, x.code or WHOLE_DAY) not in existing]
    if fresh:
        days_of_new = sorted({failure.start for failure in fresh})
        report.recorded = record_failures(connection, asset, fresh, days_of_new, max_retries)
    if again:
        now = dt.datetime.now(tz=dt.UTC)
        updates = []
        for failure in again:
            old = existing[(failure.start, failure.code or WHOLE_DAY)]
            retries = old.retry_count + 1
            updates.append(
                {
                    "row_id": old.id,
                    "error_class": AUDIT_ERROR,
                    "error": failure.message,
                    "retry_count": retries,
                    "status": "abandoned" if retries >= max_retries else "retrying",
                    "last_attempt_at": now,
                    "resolved_at": None,
                }
            )
        connection.execute(
            sa.update(sync_failure).where(sync_failure.c.id == sa.bindparam("row_id")), updates
        )
        report.recorded += len(updates)
    return report


def _date(value: object) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value)[:10])


def _failure(code: str | None, day: dt.date, what: str) -> FetchFailure:
    subject = code or "the market"
    return FetchFailure(
        code,
        day,
        day,
        AUDIT_ERROR,
        f"{subject} on {day}: {what} in the warehouse although the partition was materialized "
        "(rows deleted or lost); the repair sensor re-fetches it",
    )
