"""5. Scaling: history load (daily bars, fetch + validate + write) by stocks and by workers.

`sync_market_range` (what the asset runs, without the Dagster run around it) against one fake
baostock server with the size's latency; the warehouse table is emptied between cases.
"""

from __future__ import annotations

import time

import dagster as dg

from benchmarks.common import Outcome, PeakRss, Row, in_fresh_process
from benchmarks.history import baostock_server
from benchmarks.sizes import Size
from stocksync_dagster.core import universe
from stocksync_dagster.core.sources.base import MarketSource
from stocksync_dagster.core.sync import DAILY_BARS, sync_market_range
from stocksync_dagster.core.warehouse import Warehouse
from stocksync_dagster.resources import BaostockSourceResource


def _alive_codes(source: MarketSource, size: Size) -> list[str]:
    return universe.alive_between(source.stock_basic(), size.start, size.end)


def _case(address: str, pid: int, url: str, size: Size, stocks: int, workers: int) -> Row:
    """One load in this process (run it in a fresh one: `in_fresh_process`)."""
    warehouse = Warehouse(url)
    with warehouse.begin() as connection:
        connection.execute(DAILY_BARS.table.delete())
    resource = BaostockSourceResource(server=address, workers=workers)
    try:
        with dg.build_resources({"source": resource}) as resources:
            source = resources.source
            codes = _alive_codes(source, size)[:stocks]
            with PeakRss(exclude={pid}) as rss:
                began = time.perf_counter()
                report = sync_market_range(
                    DAILY_BARS, source, warehouse, size.start, size.end, codes
                )
                seconds = time.perf_counter() - began
    finally:
        warehouse.dispose()
    return Row(
        "scaling",
        f"{len(codes)} stocks, {workers} workers",
        seconds,
        calls=report.calls,
        rows=report.rows_fetched,
        stocks=len(codes),
        rss_mb=rss.mb,
        note=f"{report.calls * size.latency_ms / 1000 / workers:.1f} s of pure latency",
        extra={"fetch_seconds": report.fetch_seconds, "write_seconds": report.write_seconds},
    )


def run(size: Size, url: str) -> Outcome:
    out = Outcome(
        params={
            "stocks": list(size.scaling_stocks),
            "workers": list(size.scaling_workers),
            "workers_sweep_stocks": size.scaling_workers_stocks,
            "latency_ms": size.latency_ms,
        }
    )
    default_workers = BaostockSourceResource.model_fields["workers"].default
    with baostock_server(size, max(size.scaling_stocks)) as (address, pid):
        for stocks in size.scaling_stocks:
            row = in_fresh_process(_case, address, pid, url, size, stocks, default_workers)
            out.rows.append(row)
        for workers in size.scaling_workers:
            stocks = size.scaling_workers_stocks
            out.rows.append(in_fresh_process(_case, address, pid, url, size, stocks, workers))
    return out
