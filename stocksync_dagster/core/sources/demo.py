"""The `demo` source: the deterministic synthetic market, served offline."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from functools import lru_cache

import pandas as pd

from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.sources.base import FetchResult, MarketSource
from stocksync_dagster.core.sources.demo_market import DEFAULT_ORIGIN, DemoMarket


@lru_cache(maxsize=4)
def shared_market(n_stocks: int, seed: int, origin: dt.date = DEFAULT_ORIGIN) -> DemoMarket:
    """One market per (size, seed, origin) per process: repeated runs reuse the panel."""
    return DemoMarket(n_stocks=n_stocks, seed=seed, origin=origin)


class DemoSource(MarketSource):
    """Offline synthetic market: realistic, deterministic from `seed`."""

    name = "demo"

    def __init__(self, n_stocks: int = 300, seed: int = 42, as_of: dt.date | None = None) -> None:
        self.market = shared_market(n_stocks, seed)
        self.as_of = as_of

    def trade_calendar(self, start: dt.date, end: dt.date) -> pd.DataFrame:
        return self.market.calendar(start, end)

    def stock_basic(self) -> pd.DataFrame:
        as_of = self.as_of or trading_calendar.shanghai_now().date()
        return self.market.stock_basic(as_of)

    def daily_bars(
        self, start: dt.date, end: dt.date, codes: Sequence[str] | None = None
    ) -> FetchResult:
        start = max(start, self.market.origin)
        wanted = list(codes) if codes is not None else None
        return FetchResult(
            frame=self.market.bars(start, end, wanted),
            calls=1,
            suspensions=self.market.suspensions(start, end, wanted),
            st=self.market.st_pairs(start, end, wanted),
        )

    def adj_factors(
        self, start: dt.date, end: dt.date, codes: Sequence[str] | None = None
    ) -> FetchResult:
        start = max(start, self.market.origin)
        frame = self.market.adj_factors(start, end, list(codes) if codes is not None else None)
        return FetchResult(frame=frame, calls=1)

    def check_connection(self) -> str:
        market = self.market
        return f"demo: offline synthetic market, {market.n_stocks} stocks, seed {market.seed}"
