"""Chunked range syncs: the same warehouse as one big chunk, and one source session for both.

A range is cut into stock batches (baostock: the REAL client against the loopback server) or
date windows (demo-based sources with injected faults). Whatever the chunking, the warehouse ends
exactly as after an unchunked run: bars, factors, `sync_failure` (recorded, retried, resolved),
`sync_rejected_row` and `suspension`, with failures and rejected rows in several chunks.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator, Sequence

import pandas as pd
import pytest
import sqlalchemy as sa

from stocksync_dagster.core import universe
from stocksync_dagster.core.errors import TooManyFailuresError
from stocksync_dagster.core.sources.baostock import BaostockSource
from stocksync_dagster.core.sources.base import ChunkAxis, FetchFailure, FetchResult, MarketSource
from stocksync_dagster.core.sources.demo import DemoSource
from stocksync_dagster.core.sources.demo_market import DemoMarket
from stocksync_dagster.core.sync import (
    ADJ_FACTOR,
    DAILY_BARS,
    PREVIEW_DAYS,
    ChunkProgress,
    SyncReport,
    plan_chunks,
    sync_market,
)
from stocksync_dagster.core.warehouse import Warehouse, schema
from stocksync_dagster.core.warehouse.schema import WHOLE_DAY
from tests.fakes.baostock_server import FakeBaostockServer

START, END = dt.date(2024, 1, 2), dt.date(2024, 2, 29)
AS_OF = dt.date(2024, 3, 29)
STOCKS = 24
FAST = {"call_timeout_seconds": 5.0, "backoff_seconds": 0.01, "max_attempts": 2, "workers": 2}
ONE_CHUNK = 10**9
SMALL_CHUNK = 150  # ~4 stocks x 39 days, or ~6 days x 24 stocks: several chunks either way
BOTH = (DAILY_BARS, ADJ_FACTOR)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def market() -> DemoMarket:
    return DemoMarket(STOCKS, seed=11, origin=START)


@pytest.fixture(scope="module")
def server(market: DemoMarket) -> Iterator[FakeBaostockServer]:
    with FakeBaostockServer(market, as_of=AS_OF, hang_seconds=5) as fake:
        yield fake


def _codes(market: DemoMarket) -> list[str]:
    """The stocks listed at some point of the range, sorted (the order of the stock batches)."""
    return universe.alive_between(market.stock_basic(AS_OF), START, END)


def _traded(market: DemoMarket, code: str, day: dt.date) -> tuple[str, dt.date]:
    """(code, the first day on or after `day` the stock traded)."""
    bars = market.bars(day, END, [code])
    return code, min(bars["trade_date"])


class FaultyDemo(DemoSource):
    """The demo market with what real sources do: a lost row, bad rows, a whole failed day."""

    def __init__(self, axis: ChunkAxis, lost: tuple[str, dt.date], bad: list[tuple[str, dt.date]],
                 failed_day: dt.date) -> None:  # fmt: skip
        super().__init__(n_stocks=STOCKS, seed=11, as_of=AS_OF)
        self.axis, self.lost, self.bad, self.failed_day = axis, lost, bad, failed_day

    @property
    def chunk_axis(self) -> ChunkAxis:
        return self.axis

    def daily_bars(
        self, start: dt.date, end: dt.date, codes: Sequence[str] | None = None
    ) -> FetchResult:
        result = super().daily_bars(start, end, codes)
        frame = result.frame.copy()
        pair = list(zip(frame["code"], frame["trade_date"], strict=True))
        keep = [p != self.lost and p[1] != self.failed_day for p in pair]
        bad = [p in self.bad for p in pair]
        frame.loc[bad, "high"] = frame.loc[bad, "low"] * 0.5  # high below low: rejected
        result.frame = frame[keep].reset_index(drop=True)
        if start <= self.failed_day <= end:
            result.failures.append(
                FetchFailure(None, self.failed_day, self.failed_day, "HTTPError", "day lost")
            )
            assert result.suspensions is not None
            result.suspensions = result.suspensions[
                result.suspensions["trade_date"] != self.failed_day
            ]
        return result


def _seed(warehouse: Warehouse, codes: list[str]) -> None:
    """What earlier runs left: open failures (one heals now, one keeps failing, one whole day),
    a stale rejected row and a suspension of a stock no longer in the market."""
    now = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
    rows = [
        (codes[1], dt.date(2024, 1, 10), "pending", 0),
        (codes[-1], dt.date(2024, 2, 20), "retrying", 2),
        (WHOLE_DAY, dt.date(2024, 1, 4), "pending", 0),
    ]
    with warehouse.begin() as connection:
        connection.execute(
            sa.insert(schema.sync_failure),
            [
                {
                    "asset": asset,
                    "trade_date": day,
                    "code": code,
                    "error_class": "Old",
                    "error": "old",
                    "retry_count": retries,
                    "status": status,
                    "first_attempt_at": now,
                    "last_attempt_at": now,
                    "resolved_at": None,
                }
                for asset in ("daily_bars", "adj_factor")
                for code, day, status, retries in rows
            ],
        )
        connection.execute(
            sa.insert(schema.sync_rejected_row),
            [
                {
                    "asset": "daily_bars",
                    "trade_date": dt.date(2024, 1, 8),
                    "code": codes[3],
                    "reason": "old",
                    "raw": "old",
                    "rejected_at": now,
                }
            ],
        )
        connection.execute(
            sa.insert(schema.suspension),
            [{"code": "600999.SH", "trade_date": dt.date(2024, 1, 9), "source": "old"}],
        )


def _empty(warehouse: Warehouse) -> None:
    with warehouse.begin() as connection:
        for table in reversed(schema.metadata.sorted_tables):
            connection.execute(table.delete())


def _snapshot(warehouse: Warehouse) -> dict[str, list[tuple]]:
    """Every table a market sync writes, without surrogate ids and wall-clock times."""
    skip = {"id", "first_attempt_at", "last_attempt_at", "resolved_at", "rejected_at"}
    tables = (
        schema.daily_bar,
        schema.adj_factor,
        schema.sync_failure,
        schema.sync_rejected_row,
        schema.suspension,
    )
    out = {}
    with warehouse.connect() as connection:
        for table in tables:
            columns = [c for c in table.columns if c.name not in skip]
            rows = connection.execute(sa.select(*columns)).all()
            out[table.name] = sorted((tuple(str(v) for v in row) for row in rows), key=lambda r: r)
    return out


def _figures(report: SyncReport) -> dict[str, object]:
    return {
        "rows_fetched": report.rows_fetched,
        "per_day": report.fetched_per_day,
        "codes": sorted(report.fetched_codes),
        "stats": report.stats,
        "failed_codes": sorted(report.failed_codes),
        "failed_days": sorted(report.failed_days),
        "rejected": sorted((r.code, str(r.trade_date), r.reason) for r in report.rejected),
        "failure_rows": report.failure_rows,
        "resolved_rows": report.resolved_rows,
        "stored_rows": report.stored_rows,
        "suspended": report.suspended,
        "refetched": report.refetched,
        "rows_by_source": report.rows_by_source,
    }


def _run_twice(
    warehouse: Warehouse, make_source, codes: list[str], chunk_rows: int
) -> tuple[dict, dict, list[ChunkProgress]]:
    """(snapshot, report figures) of an unchunked run, then of a chunked one, each from the
    same seeded warehouse; plus the chunked run's progress events."""
    results = []
    progress: list[ChunkProgress] = []
    for rows in (ONE_CHUNK, chunk_rows):
        _empty(warehouse)
        _seed(warehouse, codes)
        with make_source() as source:
            try:
                reports = sync_market(
                    BOTH, source, warehouse, START, END, max_failed_share=1.0,
                    chunk_rows=rows, on_chunk=progress.append if rows == chunk_rows else None,
                )  # fmt: skip
            except TooManyFailuresError as exc:  # a whole day failed: written all the same
                reports = dict(exc.reports)  # type: ignore[arg-type]
        results.append(
            (_snapshot(warehouse), {k: _figures(r) for k, r in reports.items()}, reports)
        )
    (one, one_figures, one_reports), (many, many_figures, many_reports) = results
    assert one_reports["daily_bars"].chunks == 1 and many_reports["daily_bars"].chunks > 2
    return (one, many), (one_figures, many_figures), progress


def _assert_equal_runs(snapshots: tuple[dict, dict], figures: tuple[dict, dict]) -> None:
    one, many = snapshots
    for table in one:
        assert many[table] == one[table], f"{table} differs between chunked and unchunked"
    assert figures[1] == figures[0]


def test_baostock_stock_batches_equal_one_chunk(
    warehouse: Warehouse, server: FakeBaostockServer, market: DemoMarket
) -> None:
    codes = _codes(market)
    bad_early, bad_late, failing = codes[0], codes[-3], codes[-1]
    lost, lost_day = _traded(market, codes[10], dt.date(2024, 1, 17))

    def make_source() -> BaostockSource:
        server.clear_faults()
        server.inject("malformed", call="query_history_k_data_plus", code=bad_early, times=None)
        server.inject("malformed", call="query_history_k_data_plus", code=bad_late, times=None)
        server.inject("error", call="query_history_k_data_plus", code=failing, times=None)
        server.omit(lost, lost_day)
        return BaostockSource(server=("127.0.0.1", server.port), **FAST)

    try:
        snapshots, figures, progress = _run_twice(warehouse, make_source, codes, SMALL_CHUNK)
    finally:
        server.clear_faults()
    _assert_equal_runs(snapshots, figures)
    one, _ = snapshots
    failures = {(r[0], r[2], r[1]) for r in one["sync_failure"]}  # asset, code, day
    assert ("daily_bars", lost, str(lost_day)) in failures  # absent on the re-fetch too
    assert len([f for f in failures if f[:2] == ("daily_bars", failing)]) > 1
    rejected_codes = {r[2] for r in one["sync_rejected_row"]}
    assert {bad_early, bad_late} <= rejected_codes and codes[3] not in rejected_codes
    assert not any(r[0] == "600999.SH" for r in one["suspension"])
    # the stock batches are what was asked: several, each committed with its figures
    assert [p.chunk for p in progress] == list(range(1, len(progress) + 1))
    assert all(p.stocks is not None and p.stocks <= 4 for p in progress)
    assert progress[-1].completed_days and not progress[0].completed_days
    assert (
        progress[-1].rows_total
        == figures[0]["daily_bars"]["rows_fetched"] + figures[0]["adj_factor"]["rows_fetched"]
    )


@pytest.mark.parametrize("axis", ["days", "stocks"])
def test_faulty_demo_chunks_equal_one_chunk(
    warehouse: Warehouse, axis: ChunkAxis, market: DemoMarket
) -> None:
    codes = _codes(market)
    bad = [_traded(market, codes[2], START), _traded(market, codes[-2], dt.date(2024, 2, 26))]
    lost = _traded(market, codes[5], dt.date(2024, 2, 1))
    failed_day = dt.date(2024, 1, 24)

    def make_source() -> MarketSource:
        return FaultyDemo(axis, lost, bad, failed_day)

    snapshots, figures, progress = _run_twice(warehouse, make_source, codes, SMALL_CHUNK)
    _assert_equal_runs(snapshots, figures)
    one, _ = snapshots
    failures = {(r[0], r[2], r[1], r[6]) for r in one["sync_failure"]}  # asset, code, day, status
    assert ("daily_bars", lost[0], str(lost[1]), "pending") in failures
    assert ("daily_bars", WHOLE_DAY, str(failed_day), "pending") in failures
    assert ("daily_bars", WHOLE_DAY, "2024-01-04", "resolved") in failures
    assert ("daily_bars", codes[1], "2024-01-10", "resolved") in failures
    assert len([r for r in one["sync_rejected_row"] if r[0] == "daily_bars"]) == 2
    if axis == "days":
        assert all(p.stocks is None and p.completed_days for p in progress)


def test_bars_and_factors_make_two_baostock_calls_per_stock(
    sqlite_url: str, server: FakeBaostockServer, market: DemoMarket
) -> None:
    warehouse = Warehouse(sqlite_url)
    server.clear_faults()
    server.requests.clear()
    with BaostockSource(server=("127.0.0.1", server.port), **FAST) as source:
        reports = sync_market(BOTH, source, warehouse, START, END, chunk_rows=SMALL_CHUNK)
    listed = len(_codes(market))
    assert server.requests["query_history_k_data_plus"] == listed
    assert server.requests["query_adjust_factor"] == listed
    assert reports["daily_bars"].calls + reports["adj_factor"].calls == 2 * listed
    days = len(reports["daily_bars"].open_days)
    assert reports["daily_bars"].chunks == -(-listed // (SMALL_CHUNK // days)) > 2
    assert reports["adj_factor"].rows_fetched == reports["daily_bars"].rows_fetched > 0


def test_too_many_failures_raise_after_every_chunk_is_written(
    sqlite_url: str, market: DemoMarket
) -> None:
    codes = _codes(market)
    warehouse = Warehouse(sqlite_url)
    source = FaultyDemo("days", (codes[0], START), [], failed_day=dt.date(2024, 2, 28))
    with pytest.raises(TooManyFailuresError, match=r"daily_bars .*whole days could not"):
        sync_market(BOTH, source, warehouse, START, END, chunk_rows=SMALL_CHUNK)
    with warehouse.connect() as connection:
        last = connection.execute(
            sa.select(sa.func.max(schema.adj_factor.c.trade_date))
        ).scalar_one()
    assert str(last) == "2024-02-29"  # the chunks after the failed day were written too


def test_plan_cuts_along_the_axis() -> None:
    days = [START + dt.timedelta(days=i) for i in range(10)]
    basic = DemoSource(n_stocks=STOCKS, seed=11, as_of=AS_OF).stock_basic()
    stocks = plan_chunks("stocks", days, None, basic, chunk_rows=30)
    assert [len(c.codes or ()) for c in stocks][:2] == [3, 3]
    assert all(c.days == days for c in stocks)
    windows = plan_chunks("days", days, ["600000.SH", "000001.SZ"], None, chunk_rows=6)
    assert [len(c.days) for c in windows] == [3, 3, 3, 1]
    assert plan_chunks("days", [], None, None, 5)[0].days == []


def test_preview_is_bounded(sqlite_url: str) -> None:
    warehouse = Warehouse(sqlite_url)
    source = DemoSource(n_stocks=STOCKS, seed=11, as_of=AS_OF)
    report = sync_market([DAILY_BARS], source, warehouse, START, END, chunk_rows=60)["daily_bars"]
    assert report.preview and all(len(rows) <= 10 for rows in report.preview.values())
    assert report.run_rows_by_source == {"demo": report.rows_fetched}
    # kept for the last PREVIEW_DAYS open days only (the only days a run shows one on)
    assert len(report.open_days) > PREVIEW_DAYS
    assert sorted(report.preview) == report.open_days[-PREVIEW_DAYS:]
    assert isinstance(report.preview_rows(END), pd.DataFrame)
    assert report.preview_rows(START) is None


class BrokenLater(DemoSource):
    """The demo market whose factor fetch breaks from the given window on."""

    def __init__(self, broken_from: dt.date) -> None:
        super().__init__(n_stocks=STOCKS, seed=11, as_of=AS_OF)
        self.broken_from = broken_from

    def adj_factors(
        self, start: dt.date, end: dt.date, codes: Sequence[str] | None = None
    ) -> FetchResult:
        if end >= self.broken_from:
            raise RuntimeError("the source broke")
        return super().adj_factors(start, end, codes)


def test_a_fetch_error_reaches_the_caller_after_the_earlier_chunks_commit(
    sqlite_url: str,
) -> None:
    warehouse = Warehouse(sqlite_url)
    progress: list[ChunkProgress] = []
    broken_from = dt.date(2024, 2, 1)
    with pytest.raises(RuntimeError, match="the source broke"):
        sync_market(
            BOTH, BrokenLater(broken_from), warehouse, START, END,
            chunk_rows=SMALL_CHUNK, on_chunk=progress.append,
        )  # fmt: skip
    assert progress and all(p.last_day is not None and p.last_day < broken_from for p in progress)
    with warehouse.connect() as connection:
        last = connection.execute(sa.select(sa.func.max(schema.daily_bar.c.trade_date)))
        assert str(last.scalar_one()) == str(progress[-1].last_day)


def test_a_write_error_stops_the_fetching_thread(sqlite_url: str) -> None:
    warehouse = Warehouse(sqlite_url)

    def refuse(progress: ChunkProgress) -> None:
        raise RuntimeError("the writer gave up")

    with pytest.raises(RuntimeError, match="the writer gave up"):
        sync_market(
            BOTH, DemoSource(n_stocks=STOCKS, seed=11, as_of=AS_OF), warehouse, START, END,
            chunk_rows=SMALL_CHUNK, on_chunk=refuse,
        )  # fmt: skip
    assert not [t for t in threading.enumerate() if t.name == "stocksync-fetch"]
