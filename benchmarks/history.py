"""1. History load via the baostock protocol: the old per-stock-per-day loop vs range syncs.

A loopback fake server (its own process, excluded from RSS) speaks the baostock protocol with
`latency_ms` per call. (a) times a sample of one-day calls in one session and extrapolates to
stocks x days; (b) is a real Dagster range materialization of `daily_bars` through
`BaostockSourceResource` with default settings into a scratch warehouse; (c) `sync_market` of
bars + factors from one source session (what a range run of both assets does, without the
Dagster run around it) over the year at each of `history_workers`, and over one trading day.
Each (c) row states ours / the latency bound measured in the same run: no client can beat
`(calls / workers + 3) x latency` (3: the login, the calendar and the security master, serial).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import time
from collections.abc import Iterator

import dagster as dg

from benchmarks.common import (
    Outcome,
    PeakRss,
    Row,
    Target,
    free_port,
    in_fresh_process,
    server_process,
)
from benchmarks.dagster_defs import build_defs, materialization_metadata, temp_instance
from benchmarks.sizes import Size
from stocksync_dagster.cli.runs import first_failure, materialize_range, materialize_unpartitioned
from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.sync import ADJ_FACTOR, DAILY_BARS, ChunkProgress, sync_market
from stocksync_dagster.core.warehouse import Warehouse
from stocksync_dagster.resources import BaostockSourceResource

TARGET_SECONDS = 180.0
TARGET_RSS_MB = 1000.0
TARGET_YEAR_SHARE = 0.85  # bars + factors, a year: ours / latency bound
TARGET_DAY_SHARE = 0.90  # one trading day, the whole sync
TARGET_YEAR_8_WORKERS_SECONDS = 74.0  # bars + factors, a year of 5,000 stocks, 8 workers
FULL_STOCKS = 5000
DEFAULT_WORKERS = BaostockSourceResource.model_fields["workers"].default
SERIAL_CALLS = 3  # login, query_trade_dates, query_stock_basic: before the parallel fetch


def latency_bound(calls: int, workers: int, latency_ms: float) -> float:
    """Least seconds for `calls` parallel calls on `workers` sessions, plus the serial ones."""
    return (calls / workers + SERIAL_CALLS) * latency_ms / 1000


@contextlib.contextmanager
def baostock_server(
    size: Size, stocks: int, origin: dt.date | None = None, latency_ms: float | None = None
) -> Iterator[tuple[str, int]]:
    """(`host:port`, pid) of a fake baostock server for `stocks` from `origin` (default: the
    size's year) to the size's end."""
    port = free_port()
    args = [
        "--port", str(port),
        "--stocks", str(stocks),
        "--origin", (origin or size.start).isoformat(),
        "--as-of", size.end.isoformat(),
        "--latency-ms", f"{size.latency_ms if latency_ms is None else latency_ms:g}",
    ]  # fmt: skip
    with server_process("tests.fakes.baostock_server", args, "fake baostock server") as process:
        yield f"127.0.0.1:{port}", process.pid


def old_way(address: str, size: Size, days: list[dt.date]) -> tuple[float, int]:
    """Seconds for `old_way_sample` one-stock-one-day calls in one session, and rows fetched."""
    import baostock as bs
    from baostock.common import contants

    from stocksync_dagster.core.sources.demo_market import DemoMarket

    host, port = address.split(":")
    contants.BAOSTOCK_SERVER_IP, contants.BAOSTOCK_SERVER_PORT = host, int(port)
    socket.setdefaulttimeout(30)
    codes = DemoMarket(size.stocks).stocks["code"].tolist()  # the same codes the server has
    with contextlib.redirect_stdout(None):  # the client prints chatter
        bs.login()
    rows = 0
    began = time.perf_counter()
    for i in range(size.old_way_sample):
        code, day = codes[i % len(codes)], days[(i // len(codes)) % len(days)]
        bao = f"{code[-2:].lower()}.{code[:6]}"
        rs = bs.query_history_k_data_plus(
            bao, "date,code,open,high,low,close,volume,amount", day.isoformat(), day.isoformat()
        )
        while rs.next():
            rs.get_row_data()
            rows += 1
    seconds = time.perf_counter() - began
    with contextlib.redirect_stdout(None):
        bs.logout()
    return seconds, rows


def range_run(
    address: str, server_pid: int, size: Size, url: str, asset: str, workers: int | None = None
) -> Row:
    """A real Dagster range run of `asset` over the size's year; the reference assets first."""
    source = BaostockSourceResource(server=address)
    if workers is not None:
        source = BaostockSourceResource(server=address, workers=workers)
    defs = build_defs(source, url)
    with temp_instance() as instance:
        materialize_unpartitioned(defs, instance, log_level="WARNING")
        with PeakRss(exclude={server_pid}) as rss:
            began = time.perf_counter()
            result = materialize_range(
                defs, instance, size.start, size.end, assets=(asset,), log_level="WARNING"
            )
            seconds = time.perf_counter() - began
    if not result.success:
        raise RuntimeError(f"{asset} range run failed: {first_failure(result)}")
    meta = materialization_metadata(result, asset)
    return Row(
        "history",
        f"range run {asset} ({source.workers} workers)",
        seconds,
        calls=int(meta["run_source_calls"]),
        rows=int(meta["run_rows_fetched"]),
        stocks=int(meta["run_codes"]),
        rss_mb=rss.mb,
        note="real Dagster run incl. checks, fresh process; RSS excludes the fake server",
        extra={
            "fetch_seconds": meta["run_fetch_seconds"],
            "write_seconds": meta["run_write_seconds"],
            "run_overhead_seconds": round(
                seconds - meta["run_fetch_seconds"] - meta["run_write_seconds"], 2
            ),
            "step_seconds": {
                e.step_key: round(e.event_specific_data.duration_ms / 1000, 2)
                for e in result.get_step_success_events()
            },
        },
    )


def core_sync(
    address: str,
    server_pid: int,
    url: str,
    start: dt.date,
    end: dt.date,
    workers: int,
    chunk_rows: int | None = None,
) -> dict[str, float]:
    """`sync_market` of bars + factors over [start, end] from one baostock session, into an
    emptied warehouse (run it in a fresh process: `in_fresh_process`)."""
    warehouse = Warehouse(url)
    with warehouse.begin() as connection:
        for dataset in (DAILY_BARS, ADJ_FACTOR):
            connection.execute(dataset.table.delete())
    resource = BaostockSourceResource(server=address, workers=workers)
    chunks: list[ChunkProgress] = []
    try:
        with (
            dg.build_resources({"source": resource}) as resources,
            PeakRss(exclude={server_pid}) as rss,
        ):
            began = time.perf_counter()
            reports = sync_market(
                [DAILY_BARS, ADJ_FACTOR],
                resources.source,
                warehouse,
                start,
                end,
                chunk_rows=chunk_rows,
                on_chunk=chunks.append,
            )
            seconds = time.perf_counter() - began
    finally:
        warehouse.dispose()
    bars, factors = reports["daily_bars"], reports["adj_factor"]
    return {
        "seconds": seconds,
        "calls": bars.calls + factors.calls,
        "bar_rows": bars.rows_fetched,
        "factor_rows": factors.rows_fetched,
        "stocks": sum(p.stocks or 0 for p in chunks) or len(bars.fetched_codes),
        "fetch_seconds": bars.fetch_seconds + factors.fetch_seconds,
        "write_seconds": bars.write_seconds + factors.write_seconds,
        "chunks": len(chunks),
        "rss_mb": rss.mb,
    }


def _core_row(case: str, got: dict[str, float], workers: int, latency_ms: float) -> Row:
    calls = int(got["calls"])
    bound = latency_bound(calls, workers, latency_ms)
    fetch_bound = calls / workers * latency_ms / 1000
    share = bound / got["seconds"] if got["seconds"] else 0.0
    fetch_share = fetch_bound / got["fetch_seconds"] if got["fetch_seconds"] else 0.0
    return Row(
        "history",
        case,
        got["seconds"],
        calls=calls,
        rows=int(got["bar_rows"] + got["factor_rows"]),
        stocks=int(got["stocks"]),
        rss_mb=got["rss_mb"],
        note=f"{share:.0%} of the latency bound {bound:.1f} s; "
        f"{calls / max(got['stocks'], 1):.2f} calls/stock; {int(got['chunks'])} chunks",
        extra={
            "latency_bound_seconds": round(bound, 2),
            "share_of_bound": round(share, 3),
            "fetch_share_of_bound": round(fetch_share, 3),
            "calls_per_stock": round(calls / max(got["stocks"], 1), 3),
            **{k: round(v, 2) for k, v in got.items() if k.endswith("seconds")},
            "chunks": int(got["chunks"]),
            "workers": workers,
        },
    )


def run(size: Size, url: str) -> Outcome:
    days = trading_calendar.trading_days(size.start, size.end)
    out = Outcome(params={"stocks": size.stocks, "days": len(days), "latency_ms": size.latency_ms})
    with baostock_server(size, size.stocks) as (address, pid):
        sample_seconds, _ = old_way(address, size, days)
        per_call = sample_seconds / size.old_way_sample
        total_calls = size.stocks * len(days)
        out.rows.append(
            Row(
                "history",
                "old way: 1 call per stock per day, 1 session",
                per_call * total_calls,
                calls=total_calls,
                stocks=size.stocks,
                extrapolated=True,
                note=f"extrapolated from {size.old_way_sample} timed calls "
                f"({1 / per_call:.1f} calls/s)",
            )
        )
        bars = in_fresh_process(range_run, address, pid, size, url, "daily_bars")
        out.rows.append(bars)
        year = []
        for workers in size.history_workers:
            got = in_fresh_process(core_sync, address, pid, url, size.start, size.end, workers)
            case = f"sync_market bars + adj_factor, a year, one session ({workers} workers)"
            year.append(_core_row(case, got, workers, size.latency_ms))
        workers = size.history_workers[0]
        got = in_fresh_process(core_sync, address, pid, url, size.one_day, size.one_day, workers)
        day = _core_row(
            f"sync_market bars + adj_factor, one trading day ({workers} workers)",
            got,
            workers,
            size.latency_ms,
        )
    out.rows += [*year, day]
    scale = f"{size.stocks} stocks x {len(days)} days at {size.latency_ms:g} ms/call"
    out.targets += [
        Target(
            "history",
            f"daily_bars range run <= {TARGET_SECONDS:.0f} s ({scale})",
            f"{bars.seconds:.1f} s",
            bars.seconds <= TARGET_SECONDS,
        ),
        Target(
            "history",
            f"peak RSS of the process tree <= {TARGET_RSS_MB:.0f} MB (daily_bars range run)",
            f"{bars.rss_mb:.0f} MB",
            (bars.rss_mb or 0) <= TARGET_RSS_MB,
        ),
    ]
    for row in year:
        out.targets += [
            Target(
                "history",
                f"{row.case}: 2 calls/stock",
                f"{row.extra['calls_per_stock']:.2f}",
                row.extra["calls_per_stock"] <= 2.0,
            ),
        ]
        workers = int(row.extra["workers"])
        measured = (
            f"{row.extra['share_of_bound']:.0%} ({row.seconds:.1f} s vs the bound "
            f"{row.extra['latency_bound_seconds']:.1f} s)"
        )
        if workers == DEFAULT_WORKERS:  # the configured default: the share of the bound
            out.targets.append(
                Target(
                    "history",
                    f"{row.case}: >= {TARGET_YEAR_SHARE:.0%} of the latency bound",
                    measured,
                    row.extra["share_of_bound"] >= TARGET_YEAR_SHARE,
                )
            )
        elif workers == 8 and size.stocks == FULL_STOCKS:  # the figure for 8 workers
            out.targets.append(
                Target(
                    "history",
                    f"{row.case}: <= {TARGET_YEAR_8_WORKERS_SECONDS:.0f} s",
                    measured,
                    row.seconds <= TARGET_YEAR_8_WORKERS_SECONDS,
                )
            )
    out.targets.append(
        Target(
            "history",
            f"{day.case}, the whole sync: >= {TARGET_DAY_SHARE:.0%} of the latency bound",
            f"{day.extra['share_of_bound']:.0%} (fetch alone "
            f"{day.extra['fetch_share_of_bound']:.0%})",
            day.extra["share_of_bound"] >= TARGET_DAY_SHARE,
        )
    )
    return out
