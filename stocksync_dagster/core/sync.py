"""The work behind the market assets: a date range fetched, validated and written in chunks.

`sync_market` cuts a range into chunks along the source's `chunk_axis`: stock batches for
baostock (one call per stock covers the whole range, so batches cost no extra calls), date
windows for Tushare and demo (whole-market calls per day, so windows cost nothing). A chunk is
fetched for every requested dataset from the same source session (baostock: bars, then
factors, reusing the bars' traded days), normalised and validated in a background thread while
the previous chunk is written: at most two chunks are held, whatever the range's length.

Atomicity: each chunk commits in one transaction holding every requested dataset's rows,
failures, rejections and suspensions of that chunk. A crash (even kill -9) leaves whole chunks
only, never half of one; the partitions are recorded as materialized by the run when it ends,
so the rerun fetches the range again and heals to the exact market. The run-wide bookkeeping
that needs the whole range goes with the first chunk (the rejected rows of the range are
cleared) or the last one (failures no longer failing are resolved).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import pandas as pd
import sqlalchemy as sa

from stocksync_dagster.core import universe
from stocksync_dagster.core.errors import ConfigError, TooManyFailuresError
from stocksync_dagster.core.sources.base import (
    SOURCE_COLUMN,
    ChunkAxis,
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
    daily_status,
    failures,
    revisions,
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
DEFAULT_CHUNK_ROWS = 250_000
"""Rows (per dataset) a chunk aims at: ~1 year of 1,000 stocks. Two chunks in memory cost a few
hundred MB at most, and chunk boundaries cost no calls on either axis."""
MARKET_ROWS_PER_DAY = 5_500
"""Rows of a whole-market day, to size date windows when the security master is not read."""
PREVIEW_ROWS = 10
"""Fetched rows kept per day for the UI's preview table."""
PREVIEW_DAYS = 31
"""Previews are kept for the last this many open days of a sync (a longer run shows one only
on its last partition: defs/metadata.py)."""

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
    """What one range sync did for one dataset; becomes the materializations' metadata.

    Per-day aggregates only (never the range's rows), so it stays small at any range length.
    """

    asset: str
    start: dt.date
    end: dt.date
    open_days: list[dt.date]
    stats: UpsertStats = field(default_factory=lambda: UpsertStats(0, 0, 0))
    fetched_per_day: dict[dt.date, int] = field(default_factory=dict)
    """Valid rows fetched per day (what was written)."""
    fetched_codes: set[str] = field(default_factory=set)
    """Stocks with at least one valid row."""
    preview: dict[dt.date, pd.DataFrame] = field(default_factory=dict)
    """Up to PREVIEW_ROWS fetched rows per day of the last PREVIEW_DAYS (the UI's preview)."""
    failures: list[FetchFailure] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)
    failure_rows: int = 0
    resolved_rows: int = 0
    calls: int = 0
    fetch_seconds: float = 0.0
    """Time fetching, normalising and validating (overlaps the writes)."""
    write_seconds: float = 0.0
    seconds: float = 0.0
    """Wall time of the whole sync (all datasets; fetches and writes overlap)."""
    chunks: int = 0
    codes: tuple[str, ...] | None = None
    """The only stocks fetched (a repair), or None for the whole market."""
    stored_rows: dict[dt.date, int] = field(default_factory=dict)
    """Rows per day in the warehouse after the write, over [start, end]."""
    suspended: dict[dt.date, int] = field(default_factory=dict)
    """Suspensions per day the source reported (bars only)."""
    refetched: int = 0
    """(code, day) pairs absent from the first reply that a per-stock re-fetch recovered."""
    revisions: dict[dt.date, int] = field(default_factory=dict)
    """Stored rows per day whose values this sync changed (kept in the revision table)."""
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
    def rows_fetched(self) -> int:
        """Valid rows fetched over the whole range."""
        return sum(self.fetched_per_day.values())

    @property
    def failed_codes(self) -> set[str]:
        return {f.code for f in self.failures if f.code is not None}

    @property
    def failed_days(self) -> set[dt.date]:
        return _whole_day_failures(self.failures, self.open_days)

    def rows_per_day(self) -> pd.Series:
        """Valid rows fetched per open day (0 when none)."""
        return pd.Series(
            [self.fetched_per_day.get(d, 0) for d in self.open_days],
            index=self.open_days,
            dtype=int,
        )

    def preview_rows(self, day: dt.date) -> pd.DataFrame | None:
        """The preview sample of `day`, or None when nothing was fetched for it."""
        return self.preview.get(day)

    def breakdown(self, days: Sequence[dt.date]) -> list[DayFigures]:
        """Each of `days` on its own. A rejected row belongs to the day it is dated; when only
        one day is asked for, every rejected row of the sync belongs to it (out-of-range or
        undated rows included), since that day's fetch returned them."""
        open_days = set(self.open_days)
        return [
            DayFigures(
                day=day,
                market_open=day in open_days,
                rows_stored=self.stored_rows.get(day, 0),
                rows_fetched=self.fetched_per_day.get(day, 0),
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

    def _add(self, part: _Part, label: str) -> None:
        """Fold one written chunk of this dataset into the report."""
        good = part.good
        if len(good):
            for day, n in good.groupby("trade_date", sort=False).size().items():
                self.fetched_per_day[day] = self.fetched_per_day.get(day, 0) + int(n)
            self.fetched_codes.update(good["code"].unique())
            by_source = _rows_by_day_and_source(good) or {
                day: {label: n} for day, n in good.groupby("trade_date", sort=False).size().items()
            }
            for day, per_source in by_source.items():
                into = self.rows_by_source.setdefault(day, {})
                for name, n in per_source.items():
                    into[name] = into.get(name, 0) + int(n)
            self._add_preview(good)
        self.failures += part.failures
        self.rejected += part.rejected
        self.calls += part.calls
        self.refetched += part.refetched
        self.fetch_seconds += part.seconds
        for day, n in _per_day(part.suspensions).items():
            self.suspended[day] = self.suspended.get(day, 0) + n

    def _add_preview(self, good: pd.DataFrame) -> None:
        if len(self.open_days) > PREVIEW_DAYS:
            good = good[good["trade_date"] >= self.open_days[-PREVIEW_DAYS]]
        days = good["trade_date"].unique()
        wanted = [d for d in days if len(self.preview.get(d, ())) < PREVIEW_ROWS]
        if not wanted:
            return
        heads = good[good["trade_date"].isin(wanted)].groupby("trade_date", sort=False)
        for day, rows in heads.head(PREVIEW_ROWS).groupby("trade_date", sort=False):
            kept = self.preview.get(day)
            rows = rows.reset_index(drop=True)
            self.preview[day] = (
                rows if kept is None else pd.concat([kept, rows], ignore_index=True)
            ).head(PREVIEW_ROWS)


@dataclass(frozen=True)
class ChunkProgress:
    """One chunk committed: counts, rate and ETA for the run's log."""

    chunk: int
    """1-based."""
    chunks: int
    first_day: dt.date | None
    last_day: dt.date | None
    stocks: int | None
    """Stocks in the chunk; None = the whole market."""
    rows: int
    """Rows the chunk wrote, all datasets."""
    rows_total: int
    calls_total: int
    elapsed_seconds: float
    completed_days: tuple[dt.date, ...]
    """Open days now fully written: every chunk covering them has committed."""

    @property
    def rows_per_second(self) -> float:
        return self.rows_total / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    @property
    def eta_seconds(self) -> float:
        """Seconds left if the remaining chunks go as fast as the committed ones."""
        return self.elapsed_seconds / self.chunk * (self.chunks - self.chunk)

    def describe(self) -> str:
        span = f"{self.first_day}..{self.last_day}" if self.first_day else "no open day"
        scope = f", {self.stocks} stocks" if self.stocks is not None else ""
        return (
            f"chunk {self.chunk}/{self.chunks} ({span}{scope}): {self.rows:,} rows written; "
            f"{self.rows_total:,} rows, {self.calls_total:,} calls in {self.elapsed_seconds:.1f} s "
            f"({self.rows_per_second:,.0f} rows/s), ETA {self.eta_seconds:.0f} s"
        )


def open_days_between(source: MarketSource, start: dt.date, end: dt.date) -> list[dt.date]:
    """The days in [start, end] the source's own calendar says were open."""
    cal = source.trade_calendar(start, end)
    return sorted(d for d, is_open in zip(cal["cal_date"], cal["is_open"], strict=True) if is_open)


@dataclass(frozen=True)
class Chunk:
    """A piece of a range sync: these open days for these stocks."""

    index: int
    days: list[dt.date]
    codes: list[str] | None
    """The stocks asked for; None = the whole market."""


def plan_chunks(
    axis: ChunkAxis,
    open_days: list[dt.date],
    codes: Sequence[str] | None,
    basic: pd.DataFrame | None,
    chunk_rows: int,
) -> list[Chunk]:
    """Cut the range into chunks of about `chunk_rows` rows along `axis` (at least one chunk)."""
    if not open_days:
        return [Chunk(0, [], list(codes) if codes is not None else None)]
    if axis == "stocks":
        if codes is not None:
            stocks = sorted(set(codes))
        else:
            assert basic is not None, "stock batches need the security master"
            stocks = universe.alive_between(basic, open_days[0], open_days[-1])
        per = max(1, chunk_rows // len(open_days))
        batches = [stocks[i : i + per] for i in range(0, len(stocks), per)] or [[]]
        return [Chunk(i, open_days, batch) for i, batch in enumerate(batches)]
    if codes is not None:
        width = len(set(codes))
    elif basic is not None:
        width = len(universe.listed_on(basic, open_days[-1]))
    else:
        width = MARKET_ROWS_PER_DAY
    per = max(1, chunk_rows // max(width, 1))
    wanted = list(codes) if codes is not None else None
    return [
        Chunk(i, open_days[j : j + per], wanted)
        for i, j in enumerate(range(0, len(open_days), per))
    ]


def sync_market(
    datasets: Sequence[MarketDataset],
    source: MarketSource,
    warehouse: Warehouse,
    start: dt.date,
    end: dt.date,
    codes: Sequence[str] | None = None,
    max_failed_share: float = DEFAULT_MAX_FAILED_SHARE,
    max_retries: int = failures.DEFAULT_MAX_RETRIES,
    *,
    chunk_rows: int | None = None,
    on_chunk: Callable[[ChunkProgress], None] | None = None,
    run_id: str | None = None,
) -> dict[str, SyncReport]:
    """Sync [start, end] of `datasets` (DAILY_BARS and/or ADJ_FACTOR) from one source session.

    The range goes in chunks of about `chunk_rows` rows per dataset (None: DEFAULT_CHUNK_ROWS),
    each fetched while the previous one is written and committed in its own transaction (see
    the module docstring); `on_chunk` is called after each commit. For bars, every stock listed
    and not suspended on an open day must come back: those absent are re-fetched per stock
    once, and the ones still absent are recorded in `sync_failure`. Raises TooManyFailuresError
    after writing everything when, for any dataset, more than `max_failed_share` of the stocks
    (or any whole open day) could not be fetched, so Dagster's retry policy takes over.
    Returns one report per dataset, keyed by `dataset.asset` (also on the error as `reports`).
    Stored rows whose values change keep their old values in the revision tables (`run_id`).
    """
    if not datasets or len({d.asset for d in datasets}) != len(datasets):
        raise ConfigError("datasets", "give each market dataset once, at least one")
    if not 0 <= max_failed_share <= 1:
        raise ConfigError("max_failed_share", f"{max_failed_share} is not in [0, 1]")
    if chunk_rows is not None and chunk_rows < 1:
        raise ConfigError("chunk_rows", f"{chunk_rows} is not a positive number of rows")
    started = time.monotonic()
    axis = source.chunk_axis
    needs_basic = (
        codes is not None
        or any(d.expects_universe for d in datasets)
        or (axis == "stocks" and codes is None)
    )
    basic = source.stock_basic() if needs_basic else None
    if codes is not None and basic is not None:
        universe.check_codes(codes, basic)  # before any market fetch
    open_days = open_days_between(source, start, end)
    plan = plan_chunks(axis, open_days, codes, basic, chunk_rows or DEFAULT_CHUNK_ROWS)
    reports = {
        d.asset: SyncReport(
            asset=d.asset,
            start=start,
            end=end,
            open_days=open_days,
            codes=tuple(codes) if codes is not None else None,
        )
        for d in datasets
    }
    writer = _ChunkWriter(
        datasets, warehouse, reports, start, end, codes, source.label, max_retries, axis, plan
    )
    writer.run_id, writer.revised_at = run_id, dt.datetime.now(dt.UTC)

    def fetch(chunk: Chunk) -> _Fetched:
        return _fetch_chunk(chunk, datasets, source, basic, start, end)

    rows_total = 0
    for fetched in _one_ahead(plan, fetch):
        rows = writer.write(fetched)
        rows_total += rows
        progress = ChunkProgress(
            chunk=fetched.chunk.index + 1,
            chunks=len(plan),
            first_day=fetched.chunk.days[0] if fetched.chunk.days else None,
            last_day=fetched.chunk.days[-1] if fetched.chunk.days else None,
            stocks=len(fetched.chunk.codes) if fetched.chunk.codes is not None else None,
            rows=rows,
            rows_total=rows_total,
            calls_total=sum(r.calls for r in reports.values()),
            elapsed_seconds=time.monotonic() - started,
            completed_days=writer.completed_days(fetched.chunk),
        )
        del fetched  # the chunk's frames: free them before the next one arrives
        log.info("%s: %s", "+".join(reports), progress.describe())
        if on_chunk is not None:
            on_chunk(progress)
    with warehouse.connect() as connection:
        for dataset in datasets:
            report = reports[dataset.asset]
            report.stored_rows = counts.rows_per_day(connection, dataset.table, start, end)
            if report.stats.revised:  # one stamp for every chunk of the run
                report.revisions = revisions.per_day(
                    connection, dataset.table, writer.revised_at, start, end
                )
            report.seconds = time.monotonic() - started
            report.chunks = len(plan)
    problems = [p for r in reports.values() if (p := _failure_problem(r, max_failed_share))]
    if problems:
        error = TooManyFailuresError(
            "; ".join(problems) + ". The rows that were fetched are written and the failures are "
            "in sync_failure; the step fails so Dagster retries it."
        )
        error.reports = reports
        raise error
    return reports


def sync_market_range(
    dataset: MarketDataset,
    source: MarketSource,
    warehouse: Warehouse,
    start: dt.date,
    end: dt.date,
    codes: Sequence[str] | None = None,
    max_failed_share: float = DEFAULT_MAX_FAILED_SHARE,
    max_retries: int = failures.DEFAULT_MAX_RETRIES,
    *,
    chunk_rows: int | None = None,
    run_id: str | None = None,
) -> SyncReport:
    """`sync_market` of one dataset: its report."""
    return sync_market(
        [dataset],
        source,
        warehouse,
        start,
        end,
        codes,
        max_failed_share,
        max_retries,
        chunk_rows=chunk_rows,
        run_id=run_id,
    )[dataset.asset]


@dataclass
class _Part:
    """One dataset of one fetched chunk, validated."""

    good: pd.DataFrame
    rejected: list[RejectedRow]
    failures: list[FetchFailure]
    suspensions: pd.DataFrame | None
    st: pd.DataFrame | None
    calls: int
    refetched: int
    seconds: float


@dataclass
class _Raw:
    """One dataset of one fetched chunk, as the source returned it (completed, not validated)."""

    dataset: MarketDataset
    result: FetchResult
    refetched: int
    seconds: float


@dataclass
class _Fetched:
    chunk: Chunk
    raw: list[_Raw]


def _fetch_chunk(
    chunk: Chunk,
    datasets: Sequence[MarketDataset],
    source: MarketSource,
    basic: pd.DataFrame | None,
    start: dt.date,
    end: dt.date,
) -> _Fetched:
    """Fetch and complete every dataset of `chunk`, in order, from `source` (validation is left
    to the writer's thread, so the source goes from one chunk's calls straight to the next's)."""
    raw = []
    for dataset in datasets:
        began = time.monotonic()
        refetched = 0
        if not chunk.days:
            columns = [c.name for c in dataset.table.columns]
            result = FetchResult(frame=pd.DataFrame(columns=columns))
        else:
            result = dataset.fetch(source, chunk.days[0], chunk.days[-1], chunk.codes)
            if dataset.expects_universe and basic is not None:
                refetched = _complete_universe(
                    dataset, source, result, basic, chunk.days, chunk.codes
                )
        raw.append(_Raw(dataset, result, refetched, time.monotonic() - began))
    source.end_chunk()
    return _Fetched(chunk, raw)


def _validated(fetched: _Fetched, start: dt.date, end: dt.date) -> dict[str, _Part]:
    """The chunk's datasets validated, each freed of its raw frame as soon as it is done."""
    parts = {}
    for raw in fetched.raw:
        began = time.monotonic()
        result = raw.result
        good, rejected = raw.dataset.validate(result.frame, start, end)
        result.frame = result.frame.iloc[:0]
        parts[raw.dataset.asset] = _Part(
            good=good,
            rejected=[*result.rejected, *rejected],
            failures=result.failures,
            suspensions=result.suspensions,
            st=result.st,
            calls=result.calls,
            refetched=raw.refetched,
            seconds=raw.seconds + time.monotonic() - began,
        )
    fetched.raw = []
    return parts


class _ChunkWriter:
    """Writes fetched chunks, each in one transaction, and folds them into the reports."""

    def __init__(
        self,
        datasets: Sequence[MarketDataset],
        warehouse: Warehouse,
        reports: dict[str, SyncReport],
        start: dt.date,
        end: dt.date,
        codes: Sequence[str] | None,
        label: str,
        max_retries: int,
        axis: ChunkAxis,
        plan: list[Chunk],
    ) -> None:
        self.datasets = datasets
        self.warehouse = warehouse
        self.reports = reports
        self.start, self.end = start, end
        self.codes = codes
        self.label = label
        self.max_retries = max_retries
        self.axis = axis
        self.plan = plan
        self._whole_days_recorded: dict[str, set[dt.date]] = {d.asset: set() for d in datasets}
        self.run_id: str | None = None
        self.revised_at = dt.datetime.now(dt.UTC)

    def write(self, fetched: _Fetched) -> int:
        """Validate one chunk and commit it; returns the rows it wrote (all datasets)."""
        chunk = fetched.chunk
        parts = _validated(fetched, self.start, self.end)
        first, last = chunk.index == 0, chunk.index == len(self.plan) - 1
        seconds: dict[str, float] = {}
        stats: dict[str, UpsertStats] = {}
        with self.warehouse.begin() as connection:
            for dataset in self.datasets:
                began = time.monotonic()
                part, report = parts[dataset.asset], self.reports[dataset.asset]
                stats[dataset.asset] = upsert_frame(
                    connection,
                    dataset.table,
                    part.good,
                    run_id=self.run_id,
                    revised_at=self.revised_at,
                )
                report.failure_rows += failures.record_failures(
                    connection,
                    dataset.asset,
                    self._new_failures(dataset.asset, part.failures, chunk.days),
                    chunk.days,
                    self.max_retries,
                )
                failures.record_rejections(
                    connection,
                    dataset.asset,
                    self.start,
                    self.end,
                    part.rejected,
                    self.codes,
                    replace=first,
                )
                if part.suspensions is not None:
                    failed_days = _whole_day_failures(part.failures, chunk.days)
                    synced_days = [d for d in chunk.days if d not in failed_days]
                    suspensions.replace_suspensions(
                        connection, part.suspensions, synced_days, chunk.codes, self.label
                    )
                    daily_status.replace_statuses(
                        connection,
                        daily_status.status_frame(
                            part.good,
                            part.suspensions,
                            part.st,
                            synced_days,
                            chunk.codes,
                            self.label,
                        ),
                        synced_days,
                        chunk.codes,
                    )
                if last:
                    self._finish(connection, dataset, part)
                seconds[dataset.asset] = time.monotonic() - began
        rows = 0
        for dataset in self.datasets:  # committed: now it counts
            part, report = parts[dataset.asset], self.reports[dataset.asset]
            report.stats = _sum(report.stats, stats[dataset.asset])
            report.write_seconds += seconds[dataset.asset]
            report._add(part, self.label)
            rows += len(part.good)
        return rows

    def _new_failures(
        self, asset: str, found: list[FetchFailure], days: list[dt.date]
    ) -> list[FetchFailure]:
        """`found` minus whole-day failures an earlier stock batch recorded already (a day
        is one `sync_failure` row per run, not one per batch)."""
        seen = self._whole_days_recorded[asset]
        out = []
        for failure in found:
            if failure.code is not None:
                out.append(failure)
                continue
            for day in days:
                if failure.start <= day <= failure.end and day not in seen:
                    seen.add(day)
                    out.append(FetchFailure(None, day, day, failure.error_class, failure.message))
        return out

    def _finish(self, connection: sa.Connection, dataset: MarketDataset, part: _Part) -> None:
        """Run-wide bookkeeping that needs every chunk's failures (in the last chunk)."""
        report = self.reports[dataset.asset]
        found = [*report.failures, *part.failures]
        report.resolved_rows = failures.resolve_failures(
            connection, dataset.asset, self.start, self.end, self.codes, found
        )
        if self.axis == "stocks" and self.codes is None and part.suspensions is not None:
            # each batch replaced its own stocks' suspensions: drop the other stocks' ones
            failed_days = _whole_day_failures(found, report.open_days)
            synced_days = [d for d in report.open_days if d not in failed_days]
            batched = [code for chunk in self.plan for code in chunk.codes or ()]
            suspensions.delete_other_codes(connection, synced_days, batched)
            suspensions.delete_other_codes(connection, synced_days, batched, schema.daily_status)

    def completed_days(self, chunk: Chunk) -> tuple[dt.date, ...]:
        if self.axis == "days":
            return tuple(chunk.days)
        return tuple(chunk.days) if chunk.index == len(self.plan) - 1 else ()


T = TypeVar("T")
R = TypeVar("R")
_EMPTY = object()


class _Handoff(Generic[R]):
    """A one-slot handoff between the fetching thread and the writer.

    `put` returns only once the writer took the item, so the fetcher starts chunk k+2 only
    after the writer is done with chunk k: at most two chunks are alive at once.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._item: object = _EMPTY
        self._closed = False

    def put(self, item: tuple[str, object]) -> bool:
        with self._condition:
            self._condition.wait_for(lambda: self._item is _EMPTY or self._closed)
            if self._closed:
                return False
            self._item = item
            self._condition.notify_all()
            self._condition.wait_for(lambda: self._item is _EMPTY or self._closed)
            return not self._closed

    def get(self) -> tuple[str, object]:
        with self._condition:
            self._condition.wait_for(lambda: self._item is not _EMPTY)
            item, self._item = self._item, _EMPTY
            self._condition.notify_all()
            return item  # type: ignore[return-value]

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._item = _EMPTY
            self._condition.notify_all()


def _one_ahead(items: Sequence[T], fetch: Callable[[T], R]) -> Iterator[R]:
    """`fetch(item)` for each item in order, computed one item ahead in a background thread."""
    handoff: _Handoff[R] = _Handoff()

    def work() -> None:
        try:
            for item in items:
                if not handoff.put(("item", fetch(item))):
                    return
        except BaseException as exc:  # re-raised in the writer's thread
            handoff.put(("error", exc))
            return
        handoff.put(("done", None))

    thread = threading.Thread(target=work, name="stocksync-fetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = handoff.get()
            if kind == "done":
                return
            if kind == "error":
                assert isinstance(value, BaseException)
                raise value
            yield value  # type: ignore[misc]
            value = None  # the written chunk: not held while waiting for the next one
    finally:
        handoff.close()
        thread.join()


def _sum(a: UpsertStats, b: UpsertStats) -> UpsertStats:
    return UpsertStats(
        a.inserted + b.inserted,
        a.updated + b.updated,
        a.unchanged + b.unchanged,
        a.revised + b.revised,
    )


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
    if result.st is not None and retry.st is not None and len(retry.st):
        result.st = pd.concat([result.st, retry.st[_in(retry.st, lost)]], ignore_index=True)
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


def _in(frame: pd.DataFrame, wanted: set[tuple[str, dt.date]]) -> list[bool]:
    return [(c, d) in wanted for c, d in zip(frame["code"], frame["trade_date"], strict=True)]


def _whole_day_failures(found: list[FetchFailure], open_days: list[dt.date]) -> set[dt.date]:
    return {d for f in found if f.code is None for d in open_days if f.start <= d <= f.end}


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


def _failure_problem(report: SyncReport, max_failed_share: float) -> str | None:
    """Why the sync of one dataset must fail, or None."""
    failed = report.failed_codes
    universe_size = len(report.fetched_codes) + len(failed - report.fetched_codes)
    share = len(failed) / universe_size if universe_size else 0.0
    if not report.failed_days and share <= max_failed_share:
        return None
    days = ", ".join(str(d) for d in sorted(report.failed_days)[:10])
    return (
        f"{report.asset} {report.start}..{report.end}: "
        + (f"whole days could not be fetched ({days}); " if report.failed_days else "")
        + f"{len(failed)} of {universe_size} stocks failed ({share:.1%} > "
        f"max_failed_share {max_failed_share:.1%})"
    )


def sync_reference_table(table: sa.Table, frame: pd.DataFrame, warehouse: Warehouse) -> UpsertStats:
    """Upsert a whole reference table (calendar, security master) in one transaction."""
    with warehouse.begin() as connection:
        return upsert_frame(connection, table, frame)
