"""Benchmark sizes: `full` is what issue 7 asks for; `tiny` runs in seconds (CI)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Size:
    name: str
    stocks: int = 5000
    start: dt.date = dt.date(2025, 1, 2)  # one year of trading days
    end: dt.date = dt.date(2025, 12, 31)
    latency_ms: float = 50.0
    old_way_sample: int = 200  # calls timed for the per-stock-per-day extrapolation
    tushare_stocks: int = 1000  # small replies: the rate limit, not the fake's CPU, binds
    tushare_tokens: tuple[int, ...] = (1, 3)
    tushare_cap: int = 50  # calls per window per token per API ...
    tushare_window: float = 6.0  # ... per this many seconds (50 / 6 s = 500 / min)
    tushare_low_cap: int = 20  # a lower permission level (200 / min): the limit binds longer
    write_rows_stocks: int = 6000  # x a year of trading days: 1.18M rows
    to_sql_sample: int = 50_000  # rows timed for pandas.to_sql, scaled up
    sqlite_stocks: int = 2000
    dagster_partitions: int = 250
    dagster_overhead_partitions: tuple[int, ...] = (250, 1000)
    scaling_stocks: tuple[int, ...] = (1000, 2000, 5000)
    scaling_workers: tuple[int, ...] = (1, 2, 4, 8)
    scaling_workers_stocks: int = 1000
    history_workers: tuple[int, ...] = (4, 8)  # bars + factors from one session, core sync
    one_day: dt.date = dt.date(2025, 12, 31)  # the one-trading-day case
    memory_stocks: int = 1000
    memory_years: tuple[int, ...] = (1, 2, 4)
    memory_long_years: int = 10  # the chunked sync alone over a whole history
    memory_latency_ms: float = 2.0  # low: the curve, not the network, is measured
    memory_chunk_rows: int | None = None  # None: the sync's default


FULL = Size("full")
TINY = Size(
    "tiny",
    stocks=30,
    start=dt.date(2025, 1, 2),
    end=dt.date(2025, 1, 24),
    latency_ms=2.0,
    old_way_sample=10,
    tushare_stocks=30,
    tushare_tokens=(1, 2),
    tushare_cap=4,
    tushare_low_cap=2,
    tushare_window=0.5,
    write_rows_stocks=50,
    to_sql_sample=200,
    sqlite_stocks=50,
    dagster_partitions=3,
    dagster_overhead_partitions=(3,),
    scaling_stocks=(10, 20),
    scaling_workers=(1, 2),
    scaling_workers_stocks=10,
    history_workers=(2,),
    one_day=dt.date(2025, 1, 24),
    memory_stocks=10,
    memory_years=(1, 2),
    memory_long_years=3,
    memory_latency_ms=0.0,
    memory_chunk_rows=600,
)
SIZES = {s.name: s for s in (FULL, TINY)}


def with_overrides(size: Size, **changes: object) -> Size:
    """`size` with the non-None `changes` applied (command-line overrides)."""
    return replace(size, **{k: v for k, v in changes.items() if v is not None})
