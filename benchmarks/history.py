"""1. History load via the baostock protocol: the old per-stock-per-day loop vs a range run.

A loopback fake server (its own process, excluded from RSS) speaks the baostock protocol with
`latency_ms` per call. (a) times a sample of one-day calls in one session and extrapolates to
stocks x days; (b) is a real Dagster range materialization of `daily_bars`, then `adj_factor`,
through `BaostockSourceResource` with default settings into a scratch warehouse.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import time
from collections.abc import Iterator

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
from stocksync_dagster.resources import BaostockSourceResource

TARGET_SECONDS = 180.0
TARGET_RSS_MB = 1000.0


@contextlib.contextmanager
def baostock_server(size: Size, stocks: int) -> Iterator[tuple[str, int]]:
    """(`host:port`, pid) of a fake baostock server for `stocks` over the size's year."""
    port = free_port()
    args = [
        "--port", str(port),
        "--stocks", str(stocks),
        "--origin", size.start.isoformat(),
        "--as-of", size.end.isoformat(),
        "--latency-ms", f"{size.latency_ms:g}",
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
        factors = in_fresh_process(range_run, address, pid, size, url, "adj_factor")
    both = Row(
        "history",
        "range runs daily_bars + adj_factor",
        bars.seconds + factors.seconds,
        calls=(bars.calls or 0) + (factors.calls or 0),
        rows=(bars.rows or 0) + (factors.rows or 0),
        stocks=bars.stocks,
        rss_mb=max(bars.rss_mb or 0, factors.rss_mb or 0),
        note="sum of the two runs",
    )
    out.rows += [bars, factors, both]
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
            f"daily_bars + adj_factor <= {TARGET_SECONDS:.0f} s (stretch: the whole history)",
            f"{both.seconds:.1f} s",
            both.seconds <= TARGET_SECONDS,
        ),
        Target(
            "history",
            f"peak RSS of the process tree <= {TARGET_RSS_MB:.0f} MB",
            f"{both.rss_mb:.0f} MB",
            (both.rss_mb or 0) <= TARGET_RSS_MB,
        ),
    ]
    return out
