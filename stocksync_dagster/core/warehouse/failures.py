"""`sync_failure` and `sync_rejected_row`: what could not be fetched or was refused, and when."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd
import sqlalchemy as sa

from stocksync_dagster.core.sources.base import FetchFailure, RejectedRow
from stocksync_dagster.core.warehouse.schema import WHOLE_DAY, sync_failure, sync_rejected_row

OPEN_STATUSES = ("pending", "retrying")
DEFAULT_MAX_RETRIES = 5


def _now() -> dt.datetime:
    return dt.datetime.now(tz=dt.UTC)


def record_failures(
    connection: sa.Connection,
    asset: str,
    failures: Iterable[FetchFailure],
    open_days: Sequence[dt.date],
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> int:
    """Write one row per (asset, open day, code) that failed; a repeat failure counts a retry.

    A failure already open gets `retry_count + 1` and becomes `retrying`, or `abandoned` once
    it reaches `max_retries`. A resolved one that fails again is reopened as a new incident.
    Returns the number of (day, code) rows touched.
    """
    now = _now()
    rows = {}
    for failure in failures:
        for day in open_days:
            if failure.start <= day <= failure.end:
                rows[(day, failure.code or WHOLE_DAY)] = failure
    if not rows:
        return 0
    existing = {
        (r.trade_date, r.code): r
        for r in connection.execute(
            sa.select(sync_failure).where(
                sync_failure.c.asset == asset,
                sync_failure.c.trade_date.between(min(d for d, _ in rows), max(d for d, _ in rows)),
            )
        )
    }
    inserts, updates = [], []
    for (day, code), failure in rows.items():
        message = failure.message[:4000]
        old = existing.get((day, code))
        if old is None or old.status == "resolved":
            values = {
                "asset": asset,
                "trade_date": day,
                "code": code,
                "error_class": failure.error_class[:64],
                "error": message,
                "retry_count": 0,
                "status": "pending",
                "first_attempt_at": now,
                "last_attempt_at": now,
                "resolved_at": None,
            }
            if old is None:
                inserts.append(values)
            else:
                updates.append({"row_id": old.id, **values})
        else:
            retries = old.retry_count + 1
            status = (
                "abandoned" if retries >= max_retries or old.status == "abandoned" else "retrying"
            )
            updates.append(
                {
                    "row_id": old.id,
                    "asset": asset,
                    "trade_date": day,
                    "code": code,
                    "error_class": failure.error_class[:64],
                    "error": message,
                    "retry_count": retries,
                    "status": status,
                    "first_attempt_at": old.first_attempt_at,
                    "last_attempt_at": now,
                    "resolved_at": None,
                }
            )
    if inserts:
        connection.execute(sa.insert(sync_failure), inserts)
    if updates:
        connection.execute(
            sa.update(sync_failure).where(sync_failure.c.id == sa.bindparam("row_id")), updates
        )
    return len(rows)


def resolve_failures(
    connection: sa.Connection,
    asset: str,
    start: dt.date,
    end: dt.date,
    fetched_codes: Sequence[str] | None,
    still_failing: Iterable[FetchFailure],
) -> int:
    """Mark open failures in [start, end] resolved when this fetch covered them without error.

    `fetched_codes` is what was asked for (None = the whole market). Returns rows resolved.
    """
    failing_codes = {f.code for f in still_failing if f.code is not None}
    failing_days = {(f.start, f.end) for f in still_failing if f.code is None}
    open_rows = connection.execute(
        sa.select(sync_failure.c.id, sync_failure.c.code, sync_failure.c.trade_date).where(
            sync_failure.c.asset == asset,
            sync_failure.c.status != "resolved",
            sync_failure.c.trade_date.between(start, end),
        )
    ).all()
    asked = set(fetched_codes) if fetched_codes is not None else None
    resolved = []
    for row in open_rows:
        day_failed = any(s <= row.trade_date <= e for s, e in failing_days)
        if day_failed:
            continue
        if row.code == WHOLE_DAY:
            if asked is None:
                resolved.append(row.id)
            continue
        if (asked is None or row.code in asked) and row.code not in failing_codes:
            resolved.append(row.id)
    if resolved:
        connection.execute(
            sa.update(sync_failure)
            .where(sync_failure.c.id.in_(resolved))
            .values(status="resolved", resolved_at=_now())
        )
    return len(resolved)


def record_rejections(
    connection: sa.Connection,
    asset: str,
    start: dt.date,
    end: dt.date,
    rejected: Sequence[RejectedRow],
    codes: Sequence[str] | None = None,
    *,
    replace: bool = True,
) -> int:
    """Replace the rejected rows recorded for `asset` in [start, end] with this fetch's ones
    (`replace=False`: only add them, for the later chunks of a chunked range sync)."""
    if replace:
        delete = sa.delete(sync_rejected_row).where(
            sync_rejected_row.c.asset == asset, sync_rejected_row.c.trade_date.between(start, end)
        )
        if codes is not None:
            delete = delete.where(sync_rejected_row.c.code.in_(list(codes)))
        connection.execute(delete)
    if rejected:
        now = _now()
        connection.execute(
            sa.insert(sync_rejected_row),
            [
                {
                    "asset": asset,
                    "trade_date": r.trade_date,
                    "code": r.code[:64],
                    "reason": r.reason,
                    "raw": r.raw,
                    "rejected_at": now,
                }
                for r in rejected
            ],
        )
    return len(rejected)


def open_failures(
    connection: sa.Connection, asset: str | None = None, statuses: Sequence[str] = OPEN_STATUSES
) -> pd.DataFrame:
    """Failures in the given statuses, oldest day first."""
    query = sa.select(sync_failure).where(sync_failure.c.status.in_(list(statuses)))
    if asset is not None:
        query = query.where(sync_failure.c.asset == asset)
    query = query.order_by(sync_failure.c.trade_date, sync_failure.c.code)
    return pd.DataFrame(
        connection.execute(query).mappings().all(), columns=[c.name for c in sync_failure.columns]
    )


FAILURE_COLUMNS = (
    "id",
    "asset",
    "trade_date",
    "code",
    "status",
    "retry_count",
    "error_class",
    "error",
    "first_attempt_at",
    "last_attempt_at",
    "resolved_at",
)


@dataclass(frozen=True)
class FailureFilter:
    """Which `sync_failure` rows a desk command means; every field None means all rows."""

    statuses: tuple[str, ...] | None = None
    assets: tuple[str, ...] | None = None
    codes: tuple[str, ...] | None = None
    since: dt.date | None = None  # trade_date >= since
    until: dt.date | None = None  # trade_date <= until

    def where(self) -> list[sa.ColumnElement[bool]]:
        f = sync_failure.c
        clauses: list[sa.ColumnElement[bool]] = []
        if self.statuses:
            clauses.append(f.status.in_(list(self.statuses)))
        if self.assets:
            clauses.append(f.asset.in_(list(self.assets)))
        if self.codes:
            clauses.append(f.code.in_(list(self.codes)))
        if self.since is not None:
            clauses.append(f.trade_date >= self.since)
        if self.until is not None:
            clauses.append(f.trade_date <= self.until)
        return clauses


def count_failures(connection: sa.Connection, where: FailureFilter = FailureFilter()) -> int:
    """How many `sync_failure` rows match."""
    query = sa.select(sa.func.count()).select_from(sync_failure).where(*where.where())
    return int(connection.execute(query).scalar_one())


def list_failures(
    connection: sa.Connection,
    where: FailureFilter = FailureFilter(),
    page: int = 1,
    page_size: int = 50,
) -> pd.DataFrame:
    """One page of matching rows, newest first (last attempt, then day, then code)."""
    f = sync_failure.c
    query = (
        sa.select(*(f[name] for name in FAILURE_COLUMNS))
        .where(*where.where())
        .order_by(f.last_attempt_at.desc(), f.trade_date.desc(), f.asset, f.code)
        .limit(page_size)
        .offset((page - 1) * page_size)
    )
    return pd.DataFrame(connection.execute(query).all(), columns=list(FAILURE_COLUMNS))


def reopen_failures(connection: sa.Connection, where: FailureFilter = FailureFilter()) -> int:
    """Put matching unresolved rows (pending, retrying, abandoned) back to `pending`, retries 0.

    The repair sensor then requests them again. Returns the number of rows re-opened.
    """
    clauses = [*where.where(), sync_failure.c.status != "resolved"]
    result = connection.execute(
        sa.update(sync_failure).where(*clauses).values(status="pending", retry_count=0)
    )
    return int(result.rowcount or 0)


def abandoned_since(connection: sa.Connection, after: dt.datetime | None) -> pd.DataFrame:
    """Rows abandoned (their last attempt) after `after` (all when None), oldest first."""
    f = sync_failure.c
    query = sa.select(f.asset, f.trade_date, f.code, f.retry_count, f.error, f.last_attempt_at)
    query = query.where(f.status == "abandoned")
    if after is not None:
        query = query.where(f.last_attempt_at > after)
    query = query.order_by(f.last_attempt_at, f.trade_date, f.code)
    return pd.DataFrame(
        connection.execute(query).all(),
        columns=["asset", "trade_date", "code", "retry_count", "error", "last_attempt_at"],
    )


FAILURE_DESK_COMMAND = "stocksync failures"


def newest_open_rows(connection: sa.Connection, asset: str, limit: int = 10) -> pd.DataFrame:
    """The newest unresolved rows of `asset` (last attempt first): the failure desk's page 1."""
    where = FailureFilter(statuses=(*OPEN_STATUSES, "abandoned"), assets=(asset,))
    frame = list_failures(connection, where, page=1, page_size=limit)
    return frame[["trade_date", "code", "status", "retry_count", "last_attempt_at", "error"]]


def desk_commands(asset: str) -> str:
    """The failure-desk commands for an asset's open rows (shown in check metadata)."""
    return (
        f"`{FAILURE_DESK_COMMAND} --asset {asset}` lists them (paged, --format csv|json); "
        f"`{FAILURE_DESK_COMMAND} retry --asset {asset} [--status abandoned] [--now]` "
        "re-queues them"
    )
