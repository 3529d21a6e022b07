"""The baostock source against a loopback server speaking the real protocol to the REAL client.

Every fault ends in bounded time, with correct rows for the other stocks and the faulted stock
either retried successfully or reported in `failures` (never as a short or partial result).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import pandas as pd
import pytest

from stocksync_dagster.core.codes import is_valid_code, to_baostock
from stocksync_dagster.core.errors import SourceUnavailableError
from stocksync_dagster.core.sources.baostock import BAR_FIELDS, BaostockSource
from stocksync_dagster.core.sources.baostock_worker import Outcome, Task
from stocksync_dagster.core.sources.base import (
    ADJ_FACTOR_COLUMNS,
    BAR_COLUMNS,
    STOCK_BASIC_COLUMNS,
    FetchResult,
)
from stocksync_dagster.core.sources.demo_market import DemoMarket
from tests.fakes.baostock_server import FakeBaostockServer

START, END = dt.date(2024, 1, 2), dt.date(2024, 2, 29)
AS_OF = dt.date(2024, 3, 29)
KEY = ["trade_date", "code"]
K_DATA = "query_history_k_data_plus"
LOCAL = "127.0.0.1"
FAST = {"call_timeout_seconds": 1.5, "backoff_seconds": 0.05}

pytestmark = pytest.mark.timeout(60)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(KEY).reset_index(drop=True)


def _assert_same(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(_sorted(actual), _sorted(expected))


@pytest.fixture(scope="module")
def market() -> DemoMarket:
    return DemoMarket(40, seed=7, origin=START)


@pytest.fixture(scope="module")
def server(market: DemoMarket) -> Iterator[FakeBaostockServer]:
    with FakeBaostockServer(market, as_of=AS_OF, hang_seconds=20) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _no_faults(server: FakeBaostockServer) -> Iterator[None]:
    server.clear_faults()
    yield
    server.clear_faults()


@pytest.fixture(scope="module")
def source(server: FakeBaostockServer) -> Iterator[BaostockSource]:
    with BaostockSource(server=(LOCAL, server.port), workers=4, max_attempts=3, **FAST) as src:
        yield src


def _victim(market: DemoMarket, index: int = 3) -> str:
    """A stock that trades on START (so its first reply row is a traded day)."""
    bars = market.bars(START, START)
    return str(sorted(bars["code"])[index])


# ----- contract ------------------------------------------------------------------------------
def test_range_fetch_equals_market_with_one_call_per_stock(
    source: BaostockSource, server: FakeBaostockServer, market: DemoMarket
) -> None:
    before = server.requests[K_DATA]
    result = source.daily_bars(START, END)
    assert list(result.frame.columns) == BAR_COLUMNS
    _assert_same(result.frame, market.bars(START, END))
    assert result.failures == [] and result.rejected == []
    universe = len(source._universe(START, END, None))
    assert universe >= market.bars(START, END)["code"].nunique()
    assert server.requests[K_DATA] - before == universe == result.calls
    assert result.frame.equals(result.frame.sort_values(KEY, kind="stable"))
    assert isinstance(result.frame["trade_date"].iloc[0], dt.date)


def test_suspended_days_are_absent(source: BaostockSource, market: DemoMarket) -> None:
    suspended = {(e.code, e.day) for e in market.events(START, END) if e.kind == "suspended"}
    assert suspended, "the market should have suspensions in range"
    frame = source.daily_bars(START, END).frame
    assert not suspended & set(zip(frame["code"], frame["trade_date"], strict=True))


def test_stock_basic_normalised_without_indices(source: BaostockSource, market: DemoMarket) -> None:
    basic = source.stock_basic()
    assert list(basic.columns) == STOCK_BASIC_COLUMNS
    assert basic["code"].map(is_valid_code).all()
    assert not {"000001.SH", "399001.SZ", "510300.SH"} & set(basic["code"])
    expected = market.stock_basic(AS_OF)
    pd.testing.assert_frame_equal(
        basic.sort_values("code").reset_index(drop=True),
        expected.sort_values("code").reset_index(drop=True),
        check_dtype=False,
    )
    assert basic["is_st"].any() and not basic["is_st"].all()


def test_trade_calendar(source: BaostockSource, market: DemoMarket) -> None:
    cal = source.trade_calendar(dt.date(2024, 2, 1), dt.date(2024, 2, 29))
    pd.testing.assert_frame_equal(cal, market.calendar(dt.date(2024, 2, 1), dt.date(2024, 2, 29)))
    assert not cal.loc[cal["cal_date"] == dt.date(2024, 2, 12), "is_open"].item()  # Spring Festival


def test_adj_factors_equal_market_two_calls_per_stock(
    server: FakeBaostockServer, market: DemoMarket
) -> None:
    with BaostockSource(server=(LOCAL, server.port), workers=2, **FAST) as src:
        result = src.adj_factors(START, END)
        universe = len(src._universe(START, END, None))
        assert result.calls == 2 * universe
        assert list(result.frame.columns) == ADJ_FACTOR_COLUMNS
        expected = market.adj_factors(START, END)
        _assert_same(result.frame, expected)
        assert (expected["adj_factor"] > 1).any()  # factors from before the origin are carried
        src.daily_bars(START, END)
        cached = src.adj_factors(START, END)  # traded days known from the bars: 1 call each
        assert cached.calls == universe
        _assert_same(cached.frame, expected)


def test_codes_limit_the_fetch(
    source: BaostockSource, server: FakeBaostockServer, market: DemoMarket
) -> None:
    codes = [_victim(market, 0), _victim(market, 5)]
    before = server.requests[K_DATA]
    result = source.daily_bars(START, END, codes=codes)
    assert server.requests[K_DATA] - before == 2
    _assert_same(result.frame, market.bars(START, END, codes))


# ----- faults --------------------------------------------------------------------------------
def _check_rest(result: FetchResult, market: DemoMarket, victim: str) -> None:
    expected = market.bars(START, END)
    _assert_same(result.frame[result.frame["code"] != victim], expected[expected["code"] != victim])


@pytest.mark.parametrize("kind", ["drop", "hang", "fin", "error"])
def test_one_off_fault_is_retried(
    kind: str, source: BaostockSource, server: FakeBaostockServer, market: DemoMarket
) -> None:
    victim = _victim(market)
    server.inject(kind, call=K_DATA, code=victim, times=1)
    before = server.stock_requests.copy()
    started = time.monotonic()
    result = source.daily_bars(START, END)
    assert time.monotonic() - started < 15
    assert result.failures == []
    _assert_same(result.frame, market.bars(START, END))
    universe = source._universe(START, END, None)
    assert result.calls == len(universe) + 1  # one retry
    # Tasks already waiting in the faulted worker's pipe ran once, elsewhere, when it was killed.
    requested = server.stock_requests - before
    assert {code: n for (method, code), n in requested.items() if method == K_DATA} == {
        to_baostock(code): 2 if code == victim else 1 for code in universe
    }


@pytest.mark.parametrize("kind", ["drop", "hang", "fin", "error"])
def test_persistent_fault_is_reported(
    kind: str, server: FakeBaostockServer, market: DemoMarket
) -> None:
    victim = _victim(market)
    server.inject(kind, call=K_DATA, code=victim, times=None)
    started = time.monotonic()
    with BaostockSource(server=(LOCAL, server.port), workers=3, max_attempts=2, **FAST) as src:
        result = src.daily_bars(START, END)
    assert time.monotonic() - started < 20
    assert [f.code for f in result.failures] == [victim]
    failure = result.failures[0]
    assert (failure.start, failure.end, failure.attempts) == (START, END, 2)
    expected_class = {"drop": "NetworkError", "hang": "NetworkError", "fin": "CallTimeout"}
    assert failure.error_class == expected_class.get(kind, "BaostockError")
    assert "baostock" in failure.message and K_DATA in failure.message
    assert victim in failure.message and "repair" in failure.message
    assert victim not in set(result.frame["code"])
    _check_rest(result, market, victim)


def test_malformed_rows_are_rejected(
    source: BaostockSource, server: FakeBaostockServer, market: DemoMarket
) -> None:
    victim = _victim(market)
    server.inject("malformed", call=K_DATA, code=victim, times=1)
    result = source.daily_bars(START, END)
    assert result.failures == []
    reasons = sorted(r.reason for r in result.rejected)
    assert len(reasons) == 3 and {r.code for r in result.rejected} == {victim}
    assert any("not a number" in r for r in reasons)
    assert any("unknown code format" in r for r in reasons)
    assert any("outside the requested" in r for r in reasons)
    expected = market.bars(START, END)
    expected = expected[~((expected["code"] == victim) & (expected["trade_date"] == START))]
    _assert_same(result.frame, expected)


def test_a_run_that_raised_leaves_no_stale_replies(
    server: FakeBaostockServer, market: DemoMarket
) -> None:
    """Replies still owed to an aborted run (workers hold the next task in their pipe) never
    count for the next run: its workers start afresh and every stock comes back right."""
    with BaostockSource(server=(LOCAL, server.port), workers=2, **FAST) as src:
        universe = src._universe(START, END, None)
        tasks = [Task(c, (src._bars_call(c, START, END, BAR_FIELDS),)) for c in universe]
        seen: list[str] = []

        def explode_on_second(outcome: Outcome) -> None:
            seen.append(outcome.key)
            if len(seen) == 2:
                raise RuntimeError("parse failed")

        with pytest.raises(RuntimeError, match="parse failed"):
            src._pool.run(tasks, explode_on_second)
        result = src.daily_bars(START, END)
    assert result.failures == []
    _assert_same(result.frame, market.bars(START, END))
    assert result.calls == len(universe)


def test_login_failure_everywhere_raises_source_unavailable(server: FakeBaostockServer) -> None:
    server.inject("login_fail", times=None)
    started = time.monotonic()
    src = BaostockSource(server=(LOCAL, server.port), workers=2, max_attempts=2, **FAST)
    with pytest.raises(SourceUnavailableError) as caught, src:
        src.daily_bars(START, END)
    assert time.monotonic() - started < 15
    message = str(caught.value)
    assert "baostock" in message and server.address in message and "10001011" in message
    assert "BAOSTOCK_SERVER" in message


def test_transient_login_failure_recovers(server: FakeBaostockServer, market: DemoMarket) -> None:
    server.inject("login_fail", times=2)
    with BaostockSource(server=(LOCAL, server.port), workers=2, max_attempts=3, **FAST) as src:
        result = src.daily_bars(START, END)
    assert result.failures == []
    _assert_same(result.frame, market.bars(START, END))


def test_unreachable_server_raises_source_unavailable() -> None:
    started = time.monotonic()
    src = BaostockSource(server=(LOCAL, 9), workers=1, max_attempts=2, **FAST)
    with pytest.raises(SourceUnavailableError, match=r"127\.0\.0\.1:9"), src:
        src.trade_calendar(START, END)
    assert time.monotonic() - started < 15


# ----- pagination: an error on page 2 must not pass as a short result ------------------------
LONG_START, LONG_END = dt.date(2015, 1, 5), dt.date(2023, 12, 29)


@pytest.fixture(scope="module")
def long_market() -> DemoMarket:
    return DemoMarket(10, seed=3, origin=LONG_START)


@pytest.fixture(scope="module")
def long_server(long_market: DemoMarket) -> Iterator[FakeBaostockServer]:
    with FakeBaostockServer(long_market, as_of=LONG_END, hang_seconds=20) as fake:
        yield fake


@pytest.mark.parametrize("times", [1, None])
def test_error_on_page_two(
    times: int | None, long_server: FakeBaostockServer, long_market: DemoMarket
) -> None:
    expected = long_market.bars(LONG_START, LONG_END)
    counts = expected["code"].value_counts()
    victim = str(counts.index[0])
    assert counts.iloc[0] > 2000  # the reply spans two pages
    long_server.inject("page2_error", call=K_DATA, code=victim, times=times)
    with BaostockSource(server=(LOCAL, long_server.port), workers=2, max_attempts=2, **FAST) as src:
        result = src.daily_bars(LONG_START, LONG_END)
    if times is None:
        assert [f.code for f in result.failures] == [victim]
        assert result.failures[0].error_class == "PartialResult"
        assert "a later page failed" in result.failures[0].message
        assert victim not in set(result.frame["code"])
        expected = expected[expected["code"] != victim]
    else:
        assert result.failures == []
    _assert_same(result.frame, expected)
