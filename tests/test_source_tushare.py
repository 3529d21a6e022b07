"""The tushare source, through the REAL tushare client, against the loopback fake server."""

from __future__ import annotations

import datetime as dt
import logging
import time
import traceback
from collections.abc import Iterator

import pandas as pd
import pandas.testing as pdt
import pytest
import tushare

from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.errors import SourceError, SourceUnavailableError
from stocksync_dagster.core.sources import tushare_normalize as norm
from stocksync_dagster.core.sources.base import BAR_COLUMNS
from stocksync_dagster.core.sources.demo_market import DemoMarket
from stocksync_dagster.core.sources.tushare import TushareSource
from tests.fakes.tushare_server import FakeTushareServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(30)]

ORIGIN = dt.date(2025, 1, 2)
START, END = dt.date(2025, 1, 2), dt.date(2025, 1, 24)
SHORT_END = dt.date(2025, 1, 10)  # 7 trading days
DAY = dt.date(2025, 1, 8)
TOKENS = ["tok-alpha-5f3c9a1e77d2", "tok-bravo-0b4e6d2c9a18", "tok-delta-7e1a3c5b9d40"]
BAD = "tok-wrong-99aa88bb77cc"


@pytest.fixture(scope="module")
def market() -> DemoMarket:
    return DemoMarket(50, origin=ORIGIN)


@pytest.fixture
def server(market: DemoMarket) -> Iterator[FakeTushareServer]:
    with FakeTushareServer(market, valid_tokens=TOKENS) as fake:
        yield fake


@pytest.fixture(autouse=True)
def no_token_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test: no token appears in any log record, whatever the level."""
    caplog.set_level(logging.DEBUG)
    yield
    for token in [*TOKENS, BAD]:
        assert token not in caplog.text


def source(server: FakeTushareServer, tokens: list[str] | None = None, **options) -> TushareSource:
    settings = {
        "api_url": server.url,
        "backoff_seconds": 0.01,
        "call_timeout_seconds": 2.0,
        "max_attempts": 3,
        "rate_limit_pause_seconds": 0.05,
        **options,
    }
    return TushareSource(tokens or TOKENS[:1], **settings)


def ordered(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["trade_date", "code"]).reset_index(drop=True)


def without_day(frame: pd.DataFrame, day: dt.date) -> pd.DataFrame:
    return ordered(frame[frame["trade_date"] != day])


def open_days(start: dt.date, end: dt.date) -> int:
    return len(trading_calendar.trading_days(start, end))


def assert_no_token(text: str) -> None:
    for token in [*TOKENS, BAD]:
        assert token not in text


# ----- contract -----------------------------------------------------------------------------
def test_range_fetch_equals_the_market_with_one_call_per_open_day(server, market):
    src = source(server)
    bars = src.daily_bars(START, END)
    factors = src.adj_factors(START, END)

    pdt.assert_frame_equal(bars.frame, ordered(market.bars(START, END)))
    pdt.assert_frame_equal(factors.frame, ordered(market.adj_factors(START, END)))
    assert bars.frame.equals(ordered(bars.frame)), "sorted by (trade_date, code)"
    assert (bars.failures, bars.rejected, factors.failures) == ([], [], [])
    days = open_days(START, END)
    # per open day: daily + suspend_d (bars only); + the calendar, shared by the second fetch,
    # + stock_basic (L, D, P) once for the expected universe of each day, + namechange once
    # for the ST periods
    assert bars.calls == 2 * days + 1 + 3 + 1
    assert factors.calls == days
    assert server.outcomes("daily") == ["ok"] * days
    assert server.outcomes("suspend_d") == ["ok"] * days
    assert ordered(bars.suspensions).equals(ordered(market.suspensions(START, END)))
    assert all(set(c.params) == {"trade_date"} for c in server.calls if c.api == "daily")


def test_units_are_converted_from_lots_and_thousands(server, market):
    pro = tushare.pro_api(TOKENS[0])
    pro._DataApi__http_url = server.url
    raw = pro.daily(trade_date=DAY.strftime("%Y%m%d")).set_index("ts_code")
    bars = source(server).daily_bars(DAY, DAY).frame.set_index("code")

    assert (bars["volume"] == (raw.loc[bars.index, "vol"] * 100).round()).all()
    assert (bars["amount"] == (raw.loc[bars.index, "amount"] * 1000).round(2)).all()
    assert (bars["volume"] % 100 == 0).all()
    assert (bars["amount"] > raw.loc[bars.index, "amount"] * 999).all()
    truth = market.bars(DAY, DAY).set_index("code").loc[bars.index]
    assert (bars["amount"] == truth["amount"]).all()  # no float noise from /1000 * 1000
    assert {type(d) for d in bars["trade_date"]} == {dt.date}


def test_codes_filter_a_repair_fetch(server, market):
    codes = list(market.stocks["code"][:3])
    result = source(server).daily_bars(START, SHORT_END, codes=codes)
    pdt.assert_frame_equal(result.frame, ordered(market.bars(START, SHORT_END, codes)))
    assert set(result.frame["code"]) == set(codes)


def test_calendar_and_security_master():
    market = DemoMarket(50, seed=7, origin=ORIGIN)
    as_of = dt.date(2026, 6, 1)
    with FakeTushareServer(market, as_of=as_of, row_cap=30) as fake:
        src = source(fake, row_cap=30)
        cal = src.trade_calendar(dt.date(2025, 1, 20), dt.date(2025, 2, 10))
        basic = src.stock_basic()
    pdt.assert_frame_equal(cal, market.calendar(dt.date(2025, 1, 20), dt.date(2025, 2, 10)))
    expected = market.stock_basic(as_of).sort_values("code").reset_index(drop=True)
    pdt.assert_frame_equal(basic, expected)
    assert {"listed", "delisted"} <= set(basic["status"]) and basic["is_st"].any()
    assert len(basic) > 30, "the listed set is above the row cap: split by exchange"


# ----- faults -------------------------------------------------------------------------------
def test_http_500_once_is_retried(server, market):
    server.inject("http500", api="daily", trade_date=DAY, times=1)
    result = source(server).daily_bars(START, SHORT_END)
    pdt.assert_frame_equal(result.frame, ordered(market.bars(START, SHORT_END)))
    assert result.failures == []
    assert server.outcomes("daily").count("http500") == 1


def test_persistent_500_becomes_a_day_failure_and_other_days_survive(server, market):
    server.inject("http500", api="daily", trade_date=DAY, times=None)
    result = source(server, max_attempts=3).daily_bars(START, SHORT_END)

    pdt.assert_frame_equal(result.frame, without_day(market.bars(START, SHORT_END), DAY))
    [failure] = result.failures
    assert (failure.code, failure.start, failure.end) == (None, DAY, DAY)
    assert (failure.error_class, failure.attempts) == ("EmptyReply", 3)
    assert "daily 2025-01-08" in failure.message
    assert server.outcomes("daily").count("http500") == 3


@pytest.mark.parametrize("fault", ["hang", "drop"])
def test_hang_or_dropped_connection_once_is_retried(server, market, fault):
    server.inject(fault, api="adj_factor", trade_date=DAY, times=1)
    began = time.monotonic()
    result = source(server, call_timeout_seconds=0.5).adj_factors(START, SHORT_END)
    assert time.monotonic() - began < 5
    pdt.assert_frame_equal(result.frame, ordered(market.adj_factors(START, SHORT_END)))
    assert server.outcomes("adj_factor").count(fault) == 1


def test_persistent_hang_is_bounded_by_the_timeout(server, market):
    server.inject("hang", api="daily", trade_date=DAY, times=None)
    began = time.monotonic()
    result = source(server, call_timeout_seconds=0.3, max_attempts=2).daily_bars(START, SHORT_END)
    assert time.monotonic() - began < 5
    [failure] = result.failures
    assert (failure.start, failure.error_class, failure.attempts) == (DAY, "Timeout", 2)
    pdt.assert_frame_equal(result.frame, without_day(market.bars(START, SHORT_END), DAY))


def test_rate_limit_reply_moves_calls_to_another_token(market, caplog):
    end = dt.date(2025, 1, 8)  # 5 trading days
    with FakeTushareServer(market, valid_tokens=TOKENS, rate_limit=5) as fake:
        other_program = tushare.pro_api(TOKENS[0])
        other_program._DataApi__http_url = fake.url
        for _ in range(5):  # another program has used up token #1's minute on daily
            other_program.daily(trade_date="20250102")
        began = time.monotonic()
        result = source(fake, TOKENS[:2]).daily_bars(START, end)
        elapsed = time.monotonic() - began
        served = [c.token for c in fake.calls[5:] if c.api == "daily" and c.outcome == "ok"]
        refused = fake.outcomes("daily").count("rate_limited")
    pdt.assert_frame_equal(result.frame, ordered(market.bars(START, end)))
    assert result.failures == [] and elapsed < 5
    assert refused >= 1 and served == [TOKENS[1]] * 5
    assert "token #1 (to…d2) may call daily only 5 times a minute" in caplog.text


def test_rate_limit_reply_with_one_token_waits_and_resumes(market, caplog):
    # A window long enough that the first calls always exceed the limit inside it, however
    # slow the machine (the source also calls suspend_d between its daily calls).
    with FakeTushareServer(market, rate_limit=4, rate_window_seconds=2.0) as fake:
        src = source(fake, rate_window_seconds=2.0)  # the client believes 500/window
        began = time.monotonic()
        result = src.daily_bars(START, SHORT_END)
        elapsed = time.monotonic() - began
        refused = fake.outcomes().count("rate_limited")  # daily or suspend_d, each limited
    pdt.assert_frame_equal(result.frame, ordered(market.bars(START, SHORT_END)))
    assert refused >= 1 and result.failures == []
    assert 1.0 <= elapsed < 20, "7 calls at 4 per window need at least two windows"
    assert "only 4 times a minute" in caplog.text  # learned the server's limit


def test_client_rate_limiter_paces_each_token(server, market):
    src = source(server, TOKENS[:2], calls_per_minute=1, rate_window_seconds=0.4)
    began = time.monotonic()
    result = src.daily_bars(START, SHORT_END)  # 7 calls, 2 tokens x 1 per 0.4 s: 4 windows
    elapsed = time.monotonic() - began
    pdt.assert_frame_equal(result.frame, ordered(market.bars(START, SHORT_END)))
    assert 1.1 <= elapsed < 5
    assert {c.token for c in server.calls if c.api == "daily"} == set(TOKENS[:2])


def test_bad_token_is_removed_with_a_masked_warning(server, market, caplog):
    result = source(server, [BAD, TOKENS[1]]).daily_bars(START, SHORT_END)
    pdt.assert_frame_equal(result.frame, ordered(market.bars(START, SHORT_END)))
    assert result.failures == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("token #1 (to…cc) removed from the pool" in w for w in warnings)
    bad_calls = [c for c in server.calls if c.token == BAD]
    assert 1 <= len(bad_calls) <= 2, "the bad token is dropped after its first refusals"


def test_all_tokens_bad_raises_source_unavailable(server):
    with pytest.raises(SourceUnavailableError) as caught:
        source(server, [BAD, "tok-wrong-00112233aabb"]).daily_bars(START, SHORT_END)
    message = str(caught.value)
    assert "no usable token left" in message and "TUSHARE_TOKEN" in message
    assert "token #1" in message and "token #2" in message
    assert_no_token("".join(traceback.format_exception(caught.value)))


def test_token_without_permission_is_skipped_for_that_api_only(market, caplog):
    no_daily = {TOKENS[0]: ["daily"]}
    with FakeTushareServer(market, valid_tokens=TOKENS, no_permission=no_daily) as fake:
        src = source(fake, TOKENS[:2])
        bars = src.daily_bars(START, SHORT_END)
        factors = src.adj_factors(START, SHORT_END)
        factor_tokens = {c.token for c in fake.calls if c.api == "adj_factor"}
    pdt.assert_frame_equal(bars.frame, ordered(market.bars(START, SHORT_END)))
    pdt.assert_frame_equal(factors.frame, ordered(market.adj_factors(START, SHORT_END)))
    assert TOKENS[0] in factor_tokens
    assert "token #1 (to…d2) removed from the pool for daily" in caplog.text


def test_reply_at_the_row_cap_is_split_and_complete(market):
    with FakeTushareServer(market, row_cap=30) as fake:
        result = source(fake, row_cap=30).daily_bars(START, SHORT_END)
        split_calls = [c for c in fake.calls if c.api == "daily" and "ts_code" in c.params]
        outcomes = fake.outcomes("daily")
        calls = len(fake.calls)
    pdt.assert_frame_equal(result.frame, ordered(market.bars(START, SHORT_END)))
    assert outcomes.count("truncated") == open_days(START, SHORT_END)
    assert split_calls and all(c.rows < 30 for c in split_calls)
    assert result.calls == calls  # daily, calendar and the master used to split


def test_a_client_that_trusted_the_cap_would_lose_rows(market):
    """The fake really truncates: the same fetch with a too-high cap comes back short."""
    with FakeTushareServer(market, row_cap=30) as fake:
        result = source(fake, row_cap=6000).daily_bars(START, SHORT_END)
    assert (
        len(result.frame) == 30 * open_days(START, SHORT_END) < len(market.bars(START, SHORT_END))
    )


def test_malformed_rows_are_rejected_with_reasons(server, market):
    server.inject("malformed", api="daily", trade_date=DAY)
    result = source(server).daily_bars(START, SHORT_END)

    spoiled = market.bars(DAY, DAY)["code"][:3].tolist()
    truth = market.bars(START, SHORT_END)
    keep = ~((truth["trade_date"] == DAY) & truth["code"].isin(spoiled))
    pdt.assert_frame_equal(result.frame, ordered(truth[keep]))
    reasons = sorted(r.reason for r in result.rejected)
    assert len(reasons) == 3 and all(r.trade_date == DAY for r in result.rejected)
    assert reasons[0] == "non-numeric open: 'abc'"
    assert "not the requested day 20250108" in reasons[1]
    assert reasons[2] == "unknown code format 'BAD.CODE'"
    assert result.failures == []


def test_error_message_echoing_the_token_is_masked(server):
    server.inject("error", api="daily", trade_date=DAY, times=None)
    result = source(server, max_attempts=2).daily_bars(START, SHORT_END)
    [failure] = result.failures
    assert failure.error_class == "TushareError"
    assert "token #1 (to…d2)" in failure.message
    assert_no_token(failure.message)


def test_calendar_that_cannot_be_fetched_raises_a_source_error(server):
    server.inject("http500", api="trade_cal", times=None)
    with pytest.raises(SourceError, match=r"tushare trade_cal: 2025-01-02\.\.2025-01-10"):
        source(server, max_attempts=2).daily_bars(START, SHORT_END)


def test_closed_range_makes_no_data_calls(server):
    result = source(server).daily_bars(dt.date(2025, 1, 28), dt.date(2025, 2, 4))  # Spring Festival
    assert len(result.frame) == 0 and result.failures == []
    assert list(result.frame.columns) == BAR_COLUMNS
    assert server.outcomes("daily") == []


def test_normalizer_keeps_nulls_where_allowed_and_rejects_garbage():
    row = ["600000.SH", "20250108", 10.0, 10.5, 9.9, 10.2, 10.0, 2.0, 1234.56, 5678.9]
    raw = pd.DataFrame(
        [row, [*row[:6], None, None, *row[8:]], [*row[:8], None, row[9]], [*row[:2], "", *row[3:]]],
        columns=list(norm.BAR_FIELDS),
    )
    raw.loc[1:, "ts_code"] = ["000001.SZ", "000002.SZ", "000004.SZ"]
    frame, rejected = norm.bars_frame(raw, DAY)
    assert list(frame["code"]) == ["600000.SH", "000001.SZ"]
    assert frame.loc[0, "volume"] == 123456.0 and frame.loc[0, "amount"] == 5678900.0
    assert pd.isna(frame.loc[1, "pre_close"]) and pd.isna(frame.loc[1, "pct_chg"])
    assert sorted(r.reason for r in rejected) == ["missing vol", "non-numeric open: ''"]
    assert rejected[0].raw.startswith("{") and "000002.SZ" in rejected[0].raw
