"""The work behind the market assets: fetch a date range, validate, write it in one transaction."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import sqlalchemy as sa

from stocksync_dagster.core import universe
from stocksync_dagster.core.errors import ConfigError, TooManyFailuresError
from stocksync_dagster.core.sources.base import (
    SOURCE_COLUMN,
    FetchFailure,
    FetchResult,
    MarketSource,
    RejectedRow,
    with_source,
)
from stocksync_dagster.core.validation import validate_bars, validate_factors
from stocksync_dagster.core.warehouse import (
    UpsertStats,
    Warehouse,
    counts,
    failures,
    schema,
    suspensions,
)
from stocksync_dagster.core.warehouse.upsert import upsert_frame

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MarketDataset:
    """How one market asset is fetched, validated and stored."""

    asset: str
    table: sa.Table
    fetch: Callable[[MarketSource, dt.date, dt.date, Sequence[str] | None], FetchResult]
    validate: Callable[[pd.DataFrame, dt.date, dt.date], tuple[pd.DataFrame, list[RejectedRow]]]
    expects_universe: bool = False
    """Every listed, not suspended stock must have a row each open day (bars, not factors:
    sources publish factors late and partially; the factor checks and look-back cover them)."""


DEFAULT_MAX_FAILED_SHARE = 0.01
MISSING_ERROR = "MissingFromSource"

DAILY_BARS = MarketDataset(
    "daily_bars",
    schema.daily_bar,
    lambda s, a, b, c: with_source(s.daily_bars(a, b, c), s.label),
    validate_bars,
    expects_universe=True,
)
ADJ_FACTOR = MarketDataset(
    "adj_factor",
    schema.adj_factor,
    lambda s, a, b, c: with_source(s.adj_factors(a, b, c), s.label),
    validate_factors,
)


@dataclass(frozen=True)
class DayFigures:
    """One day of a range sync: what that day's partition reports as its own."""

    day: dt.date
    market_open: bool
    rows_stored: int
    """Rows the day holds in the warehouse after the write (not what was fetched)."""
    rows_fetched: int
    failed_codes: frozenset[str]
    rejected: tuple[RejectedRow, ...]


@dataclass
class SyncReport:
    """What one range sync did; becomes the materializations' metadata."""

    asset: str
    start: dt.date
    end: dt.date
    open_days: list[dt.date]
    frame: pd.DataFrame
    stats: UpsertStats
    failures: list[FetchFailure] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)
    failure_rows: int = 0
    resolved_rows: int = 0
    calls: int = 0
    fetch_seconds: float = 0.0
    write_seconds: float = 0.0
    codes: tuple[str, ...] | None = None
    """The only stocks fetched (a repair), or None for the whole market."""
    stored_rows: dict[dt.date, int] = field(default_factory=dict)
    """Rows per day in the warehouse after the write, over [start, end]."""
    suspended: dict[dt.date, int] = field(default_factory=dict)
    """Suspensions per day the source reported (bars only)."""
    refetched: int = 0
    """(code, day) pairs absent from the first reply that a per-stock re-fetch recovered."""
    rows_by_source: dict[dt.date, dict[str, int]] = field(default_factory=dict)
    """Rows written per day and `source` label (a fallback source fills some from the second)."""

    @property
    def run_rows_by_source(self) -> dict[str, int]:
        """Rows written per `source` label over the whole sync."""
        total: dict[str, int] = {}
        for per_source in self.rows_by_source.values():
            for label, rows in per_source.items():
                total[label] = total.get(label, 0) + rows
        return dict(sorted(total.items()))

    @property
    def market_open(self) -> bool:
        return bool(self.open_days)

    @property
    def failed_codes(self) -> set[str]:
        return {f.code for f in self.failures if f.code is not None}

    @property
    def failed_days(self) -> set[dt.date]:
        return {
            d
            for f in self.failures
            if f.code is None
            for d in self.open_days
            if f.start <= d <= f.end
        }

    def rows_per_day(self) -> pd.Series:
        counts = (
            self.frame.groupby("trade_date").size() if len(self.frame) else pd.Series(dtype=int)
        )
        return counts.reindex(self.open_days, fill_value=0)

    def breakdown(self, days: Sequence[dt.date]) -> list[DayFigures]:
        """Each of `days` on its own. A rejected row belongs to the day it is dated; when only
        one day is asked for, every rejected row of the sync belongs to it (out-of-range or
        undated rows included), since that day's fetch returned them."""
        open_days = set(self.open_days)
        fetched = self.rows_per_day()
        return [
            DayFigures(
                day=day,
                market_open=day in open_days,
                rows_stored=self.stored_rows.get(day, 0),
                rows_fetched=int(fetched.get(day, 0)),
                failed_codes=frozenset(
                    f.code for f in self.failures if f.code is not None and f.start <= day <= f.end
                ),
                rejected=tuple(
                    self.rejected
                    if len(days) == 1
                    else (r for r in self.rejected if r.trade_date == day)
                ),
            )
            for day in days
        ]


def open_days_between(source: MarketSource, start: dt.date, end: dt.date) -> list[dt.date]:
    """The days in [start, end] the source's own calendar says were open."""
    cal = source.trade_calendar(start, end)
    return sorted(d for d, is_open in zip(cal["cal_date"], cal["is_open"], strict=True) if is_open)


def sync_market_range(
    dataset: MarketDataset,
    source: MarketSource,
    warehouse: Warehouse,
    start: dt.date,
    end: dt.date,
    codes: Sequence[str] | None = None,
    max_failed_share: float = DEFAULT_MAX_FAILED_SHARE,
    max_retries: int = failures.DEFAULT_MAX_RETRIES,
) -> SyncReport:
    """Fetch [start, end] in one range call, validate, and write it in one transaction.

    For bars, every stock listed and not suspended on an open day must come back: those absent
    are re-fetched per stock once, and the ones still absent are recorded in `sync_failure`.
    Raises TooManyFailuresError after writing when more than `max_failed_share` of the stocks
    (or any whole open day) could not be fetched, so Dagster's retry policy takes over.
    """
    if not 0 <= max_failed_share <= 1:
        raise ConfigError("max_failed_share", f"{max_failed_share} is not in [0, 1]")
    started = time.monotonic()
    basic = source.stock_basic() if (codes is not None or dataset.expects_universe) else None
    if codes is not None and basic is not None:
        universe.check_codes(codes, basic)  # before any market fetch
    open_days = open_days_between(source, start, end)
    refetched = 0
    if not open_days:
        result = FetchResult(frame=pd.DataFrame(columns=[c.name for c in dataset.table.columns]))
    else:
        result = dataset.fetch(source, open_days[0], open_days[-1], codes)
        if dataset.expects_universe and basic is not None:
            refetched = _complete_universe(dataset, source, result, basic, open_days, codes)
    fetched = time.monotonic()
    good, rejected = dataset.validate(result.frame, start, end)
    rejected = [*result.rejected, *rejected]
    result.frame = result.frame.iloc[:0]  # a year of the market: free the raw copy before writing
    with warehouse.begin() as connection:
        stats = upsert_frame(connection, dataset.table, good)
        failure_rows = failures.record_failures(
            connection, dataset.asset, result.failures, open_days, max_retries
        )
        resolved_rows = failures.resolve_failures(
            connection, dataset.asset, start, end, codes, result.failures
        )
        failures.record_rejections(connection, dataset.asset, start, end, rejected, codes)
        if result.suspensions is not None:
            failed_days = {
                d
                for f in result.failures
                if f.code is None
                for d in open_days
                if f.start <= d <= f.end
            }
            suspensions.replace_suspensions(
                connection,
                result.suspensions,
                [d for d in open_days if d not in failed_days],
                codes,
                source.label,
            )
        stored_rows = counts.rows_per_day(connection, dataset.table, start, end)
    report = SyncReport(
        asset=dataset.asset,
        start=start,
        end=end,
        open_days=open_days,
        frame=good,
        stats=stats,
        failures=result.failures,
        rejected=rejected,
        failure_rows=failure_rows,
        resolved_rows=resolved_rows,
        calls=result.calls,
        fetch_seconds=fetched - started,
        write_seconds=time.monotonic() - fetched,
        codes=tuple(codes) if codes is not None else None,
        stored_rows=stored_rows,
        suspended=_per_day(result.suspensions),
        refetched=refetched,
        rows_by_source=_rows_by_day_and_source(good),
    )
    _raise_if_too_many_failures(report, max_failed_share)
    return report


def _complete_universe(
    dataset: MarketDataset,
    source: MarketSource,
    result: FetchResult,
    basic: pd.DataFrame,
    open_days: list[dt.date],
    codes: Sequence[str] | None,
) -> int:
    """Re-fetch, per stock, the expected (code, day) pairs the reply lacked; record the rest.

    Mutates `result`: recovered rows and suspensions are added, pairs still absent become
    per-stock FetchFailures. Stocks that already failed, and days that failed whole, are
    failures already. Returns how many pairs the re-fetch recovered.
    """
    failed_days = {
        d for f in result.failures if f.code is None for d in open_days if f.start <= d <= f.end
    }
    failed = {
        (f.code, d) for f in result.failures if f.code for d in open_days if f.start <= d <= f.end
    }
    present = universe.pairs(result.frame) | {
        (r.code, r.trade_date) for r in result.rejected if r.trade_date is not None
    }
    suspended = universe.pairs(result.suspensions)
    absent = universe.expected_absent(
        basic, [d for d in open_days if d not in failed_days], present | failed, suspended, codes
    )
    if not absent:
        return 0
    lost = {(code, day) for day, day_codes in absent.items() for code in day_codes}
    log.warning(
        "%s: %d (code, day) pairs listed and not suspended are absent from the reply (%s); "
        "re-fetching them per stock",
        dataset.asset,
        len(lost),
        ", ".join(f"{d}: {len(c)}" for d, c in list(absent.items())[:10]),
    )
    retry = dataset.fetch(source, min(absent), max(absent), sorted({code for code, _ in lost}))
    frame = retry.frame
    recovered = frame[
        [(c, d) in lost for c, d in zip(frame["code"], frame["trade_date"], strict=True)]
    ]
    result.frame = pd.concat([result.frame, recovered], ignore_index=True)
    result.rejected += [r for r in retry.rejected if (r.code, r.trade_date) in lost]
    result.calls += retry.calls
    still = lost - universe.pairs(recovered) - {(r.code, r.trade_date) for r in retry.rejected}
    if retry.suspensions is not None and len(retry.suspensions):
        late = retry.suspensions[
            [
                (c, d) in still
                for c, d in zip(
                    retry.suspensions["code"], retry.suspensions["trade_date"], strict=True
                )
            ]
        ]
        still -= universe.pairs(late)
        base = result.suspensions if result.suspensions is not None else None
        result.suspensions = (
            pd.concat([base, late], ignore_index=True) if base is not None else late
        )
    for code, day in sorted(still, key=lambda p: (p[1], p[0])):
        result.failures.append(
            FetchFailure(
                code,
                day,
                day,
                MISSING_ERROR,
                f"{code} was listed and not suspended on {day}, but the source returned no bar "
                "(also not on a per-stock re-fetch); the repair sensor fetches it again",
            )
        )
    return len(lost) - len(still)


def _whole_day_failures(found: list[FetchFailure], open_days: list[dt.date]) -> set[dt.date]:
    return {d for f in found if f.code is None for d in open_days if f.start <= d <= f.end}


def _in(frame: pd.DataFrame, wanted: set[tuple[str, dt.date]]) -> list[bool]:
    return [(c, d) in wanted for c, d in zip(frame["code"], frame["trade_date"], strict=True)]


def _rows_by_day_and_source(frame: pd.DataFrame) -> dict[dt.date, dict[str, int]]:
    if SOURCE_COLUMN not in frame.columns or frame.empty:
        return {}
    found: dict[dt.date, dict[str, int]] = {}
    for (day, label), rows in frame.groupby(["trade_date", SOURCE_COLUMN]).size().items():
        found.setdefault(day, {})[str(label)] = int(rows)
    return found


def _per_day(frame: pd.DataFrame | None) -> dict[dt.date, int]:
    if frame is None or frame.empty:
        return {}
    return {d: int(n) for d, n in frame.groupby("trade_date").size().items()}


def _raise_if_too_many_failures(report: SyncReport, max_failed_share: float) -> None:
    fetched_codes = report.frame["code"].unique()
    universe = len(fetched_codes) + len(report.failed_codes.difference(fetched_codes))
    share = len(report.failed_codes) / universe if universe else 0.0
    if report.failed_days or share > max_failed_share:
        days = ", ".join(str(d) for d in sorted(report.failed_days)[:10])
        raise TooManyFailuresError(
            f"{report.asset} {report.start}..{report.end}: "
            + (f"whole days could not be fetched ({days}); " if report.failed_days else "")
            + f"{len(report.failed_codes)} of {universe} stocks failed ({share:.1%} > "
            f"max_failed_share {max_failed_share:.1%}). The rows that were fetched are written "
            "and the failures are in sync_failure; the step fails so Dagster retries it."
        )


def sync_reference_table(table: sa.Table, frame: pd.DataFrame, warehouse: Warehouse) -> UpsertStats:
    """Upsert a whole reference table (calendar, security master) in one transaction."""
    with warehouse.begin() as connection:
        return upsert_frame(connection, table, frame)
