"""The demo market: deterministic, realistic, and in the normalised units of DESIGN.md."""

import collections
import datetime as dt

import numpy as np
import pandas as pd

from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.codes import is_valid_code
from stocksync_dagster.core.price_limits import limit_pct
from stocksync_dagster.core.sources.base import ADJ_FACTOR_COLUMNS, BAR_COLUMNS, STOCK_BASIC_COLUMNS
from stocksync_dagster.core.sources.demo import DemoSource
from stocksync_dagster.core.sources.demo_market import DemoMarket
from tests.conftest import DEMO_END, DEMO_START


def test_same_seed_same_market_whatever_range_is_asked_first() -> None:
    first = DemoMarket(seed=7)
    first.bars(DEMO_START, dt.date(2026, 3, 1))
    second = DemoMarket(seed=7)
    pd.testing.assert_frame_equal(
        first.bars(DEMO_START, DEMO_END), second.bars(DEMO_START, DEMO_END)
    )
    other = DemoMarket(seed=8).bars(DEMO_START, DEMO_END)
    assert not other["close"].equals(second.bars(DEMO_START, DEMO_END)["close"])


def test_frames_have_the_normalised_columns_and_units() -> None:
    source = DemoSource(as_of=DEMO_END)
    bars = source.daily_bars(DEMO_START, DEMO_END).frame
    assert list(bars.columns) == BAR_COLUMNS
    assert list(source.adj_factors(DEMO_START, DEMO_END).frame.columns) == ADJ_FACTOR_COLUMNS
    assert list(source.stock_basic().columns) == STOCK_BASIC_COLUMNS
    assert bars["code"].map(is_valid_code).all()
    assert set(bars["trade_date"]) == set(trading_calendar.trading_days(DEMO_START, DEMO_END))
    assert (bars["volume"] % 100 == 0).all()  # shares, in board lots
    mean_price = bars[["open", "high", "low", "close"]].mean(axis=1)
    ratio = bars["amount"] / (bars["volume"] * mean_price)
    assert ratio.between(0.99, 1.01).all()  # amount is CNY, not thousands
    assert not bars.duplicated(["code", "trade_date"]).any()
    assert (bars["low"] <= bars[["open", "close"]].min(axis=1)).all()
    assert (bars["high"] >= bars[["open", "close"]].max(axis=1)).all()


def test_window_has_the_events_real_markets_have() -> None:
    market = DemoMarket()
    kinds = collections.Counter(e.kind for e in market.events(DEMO_START, DEMO_END))
    for kind in ("ipo", "delist", "ex_dividend", "limit_up", "limit_down", "suspended"):
        assert kinds[kind] > 0, kind


def test_suspended_and_delisted_stocks_have_no_rows() -> None:
    market = DemoMarket()
    bars = market.bars(DEMO_START, DEMO_END)
    present = set(zip(bars["code"], bars["trade_date"], strict=True))
    for event in market.events(DEMO_START, DEMO_END):
        if event.kind in ("suspended", "delist"):
            assert (event.code, event.day) not in present
        if event.kind == "ipo":
            assert (event.code, event.day) in present
            before = trading_calendar.previous_trading_day(event.day)
            assert not ((bars["code"] == event.code) & (bars["trade_date"] <= before)).any()


def test_ex_dividend_day_moves_pre_close_and_factor_together() -> None:
    market = DemoMarket()
    bars = market.bars(DEMO_START, DEMO_END).sort_values(["code", "trade_date"])
    factors = market.adj_factors(DEMO_START, DEMO_END).sort_values(["code", "trade_date"])
    merged = bars.merge(factors, on=["code", "trade_date"])
    merged["prev_close"] = merged.groupby("code")["close"].shift()
    merged["prev_factor"] = merged.groupby("code")["adj_factor"].shift()
    ex = merged[merged["adj_factor"] != merged["prev_factor"]].dropna(subset=["prev_factor"])
    assert len(ex) > 0
    assert (ex["pre_close"] < ex["prev_close"]).all()
    # the hfq price series is continuous across the ex day: prev_close*f_prev == pre_close*f
    np.testing.assert_allclose(
        ex["prev_close"] * ex["prev_factor"], ex["pre_close"] * ex["adj_factor"], rtol=2e-3
    )


def test_moves_stay_within_board_limits_except_ipo_days() -> None:
    market = DemoMarket()
    bars = market.bars(DEMO_START, DEMO_END)
    stocks = market.stocks.set_index("code")
    listed = bars["code"].map(stocks["list_date"])
    limits = [
        limit_pct(b, st, market.origin)
        for b, st in zip(
            bars["code"].map(stocks["board"]), bars["code"].map(stocks["is_st"]), strict=True
        )
    ]
    regular = bars["trade_date"] != listed
    excess = bars["pct_chg"].abs() - pd.Series(limits, index=bars.index)
    half_tick_pct = 0.005 / bars["pre_close"] * 100  # limit prices round to the fen
    assert (excess[regular] <= half_tick_pct[regular] + 1e-4).all()  # pct_chg has 4 decimals
