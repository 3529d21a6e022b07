"""The warehouse on SQLite and the real PostgreSQL: idempotent, atomic upserts; units; views."""

import datetime as dt

import pandas as pd
import pytest
import sqlalchemy as sa

from stocksync_dagster.core import sync
from stocksync_dagster.core.sources.demo import DemoSource
from stocksync_dagster.core.warehouse import Warehouse, schema
from stocksync_dagster.core.warehouse.upsert import upsert_frame
from tests.conftest import DEMO_END, DEMO_START


def read_table(warehouse: Warehouse, table: sa.Table) -> pd.DataFrame:
    keys = [c.name for c in table.primary_key.columns]
    with warehouse.connect() as connection:
        frame = pd.read_sql(sa.select(table).order_by(*keys), connection)
    for column in ("trade_date", "cal_date", "list_date", "delist_date"):
        if column in frame:
            frame[column] = pd.to_datetime(frame[column]).dt.date
    return frame


def expected(frame: pd.DataFrame, source: str = "demo") -> pd.DataFrame:
    """The market's rows as the warehouse stores them: sorted, labelled with their source."""
    frame = frame.sort_values(["code", "trade_date"]).reset_index(drop=True)
    if "volume" in frame:
        frame["volume"] = frame["volume"].astype("int64")
    return frame.assign(source=source)


def sync_demo(warehouse: Warehouse, start: dt.date = DEMO_START, end: dt.date = DEMO_END) -> None:
    source = DemoSource(as_of=end)
    sync.sync_market_range(sync.DAILY_BARS, source, warehouse, start, end)
    sync.sync_market_range(sync.ADJ_FACTOR, source, warehouse, start, end)


def test_schema_is_created_and_versioned(warehouse: Warehouse) -> None:
    assert warehouse.schema_version() == "0004_history"
    names = set(sa.inspect(warehouse.engine).get_table_names())
    assert {"trade_calendar", "stock_basic", "daily_bar", "adj_factor", "sync_failure"} <= names
    assert {"daily_bar_qfq", "daily_bar_hfq"} <= set(sa.inspect(warehouse.engine).get_view_names())


def test_range_sync_writes_exactly_the_source_rows(warehouse: Warehouse) -> None:
    sync_demo(warehouse)
    market = DemoSource().market
    bars = read_table(warehouse, schema.daily_bar)
    pd.testing.assert_frame_equal(
        bars, expected(market.bars(DEMO_START, DEMO_END)), check_dtype=False
    )
    factors = read_table(warehouse, schema.adj_factor)
    pd.testing.assert_frame_equal(
        factors, expected(market.adj_factors(DEMO_START, DEMO_END)), check_dtype=False
    )


def test_reruns_leave_identical_rows(warehouse: Warehouse) -> None:
    sync_demo(warehouse)
    before = read_table(warehouse, schema.daily_bar)
    report = sync.sync_market_range(sync.DAILY_BARS, DemoSource(), warehouse, DEMO_START, DEMO_END)
    assert report.stats.inserted == 0 and report.stats.updated == 0
    assert report.stats.unchanged == len(before)
    one_day = dt.date(2025, 8, 18)
    again = sync.sync_market_range(sync.DAILY_BARS, DemoSource(), warehouse, one_day, one_day)
    assert again.stats.unchanged == len(before[before["trade_date"] == one_day])
    pd.testing.assert_frame_equal(read_table(warehouse, schema.daily_bar), before)


def test_changed_values_are_updated_in_place(warehouse: Warehouse) -> None:
    sync_demo(warehouse)
    day = dt.date(2025, 8, 5)
    frame = DemoSource().market.bars(day, day)
    frame.loc[frame.index[:3], "close"] += 0.01
    with warehouse.begin() as connection:
        stats = upsert_frame(connection, schema.daily_bar, frame)
    assert (stats.inserted, stats.updated, stats.unchanged) == (0, 3, len(frame) - 3)
    stored = read_table(warehouse, schema.daily_bar)
    assert len(stored) == len(DemoSource().market.bars(DEMO_START, DEMO_END))


def test_a_write_that_fails_half_way_leaves_the_previous_rows(
    warehouse: Warehouse, monkeypatch
) -> None:
    sync_demo(warehouse)
    before = read_table(warehouse, schema.daily_bar)

    class Changed(DemoSource):
        def daily_bars(self, start, end, codes=None):  # type: ignore[no-untyped-def]
            result = super().daily_bars(start, end, codes)
            result.frame["close"] = result.frame["close"] + 1
            return result

    def crash(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("injected crash after the bars were written")

    monkeypatch.setattr(sync.failures, "record_failures", crash)
    with pytest.raises(RuntimeError, match="injected crash"):
        sync.sync_market_range(sync.DAILY_BARS, Changed(), warehouse, DEMO_START, DEMO_END)
    pd.testing.assert_frame_equal(read_table(warehouse, schema.daily_bar), before)


def test_a_failed_first_load_leaves_nothing(warehouse: Warehouse, monkeypatch) -> None:
    def crash(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("injected crash")

    monkeypatch.setattr(sync.failures, "record_failures", crash)
    with pytest.raises(RuntimeError):
        sync.sync_market_range(sync.DAILY_BARS, DemoSource(), warehouse, DEMO_START, DEMO_END)
    assert read_table(warehouse, schema.daily_bar).empty


def test_suspended_days_are_absent_not_zero(warehouse: Warehouse) -> None:
    sync_demo(warehouse)
    bars = read_table(warehouse, schema.daily_bar)
    present = set(zip(bars["code"], bars["trade_date"], strict=True))
    suspended = [
        e for e in DemoSource().market.events(DEMO_START, DEMO_END) if e.kind == "suspended"
    ]
    assert suspended and all((e.code, e.day) not in present for e in suspended)
    assert (bars["volume"] > 0).all()


def test_units_of_a_known_bar(warehouse: Warehouse) -> None:
    sync_demo(warehouse)
    bars = read_table(warehouse, schema.daily_bar).set_index(["code", "trade_date"])
    source_row = DemoSource().market.bars(DEMO_START, DEMO_START).iloc[0]
    stored = bars.loc[(source_row["code"], DEMO_START)]
    assert stored["volume"] == int(source_row["volume"])  # shares
    assert stored["amount"] == pytest.approx(source_row["amount"])  # CNY
    assert stored["amount"] / stored["volume"] == pytest.approx(
        stored[["open", "high", "low", "close"]].mean(), rel=0.01
    )


def test_adjusted_views_around_an_ex_dividend_day(warehouse: Warehouse) -> None:
    sync_demo(warehouse)
    event = next(
        e
        for e in DemoSource().market.events(DEMO_START, DEMO_END)
        if e.kind == "ex_dividend" and e.day > dt.date(2025, 8, 11)
    )
    with warehouse.connect() as connection:
        raw = pd.read_sql(
            sa.text("SELECT * FROM daily_bar WHERE code = :c ORDER BY trade_date"),
            connection,
            params={"c": event.code},
        )
        hfq = pd.read_sql(
            sa.text("SELECT * FROM daily_bar_hfq WHERE code = :c ORDER BY trade_date"),
            connection,
            params={"c": event.code},
        )
        qfq = pd.read_sql(
            sa.text("SELECT * FROM daily_bar_qfq WHERE code = :c ORDER BY trade_date"),
            connection,
            params={"c": event.code},
        )
        factors = pd.read_sql(
            sa.text("SELECT * FROM adj_factor WHERE code = :c ORDER BY trade_date"),
            connection,
            params={"c": event.code},
        )
    assert len(raw) == len(hfq) == len(qfq) == len(factors)
    pd.testing.assert_series_equal(
        hfq["close"], raw["close"] * factors["adj_factor"], check_names=False
    )
    latest = factors["adj_factor"].iloc[-1]
    pd.testing.assert_series_equal(
        qfq["close"], raw["close"] * factors["adj_factor"] / latest, check_names=False
    )
    day = pd.to_datetime(raw["trade_date"]).dt.date
    i = int((day == event.day).to_numpy().nonzero()[0][0])
    assert i > 0, "the window must hold the day before the ex day"
    # raw prices jump down on the ex day; adjusted series are continuous (pre_close meets close)
    assert raw["pre_close"].iloc[i] < raw["close"].iloc[i - 1]
    assert hfq["pre_close"].iloc[i] == pytest.approx(hfq["close"].iloc[i - 1], rel=2e-3)
    assert qfq["pre_close"].iloc[i] == pytest.approx(qfq["close"].iloc[i - 1], rel=2e-3)
    assert qfq["close"].iloc[-1] == pytest.approx(
        raw["close"].iloc[-1]
    )  # qfq = raw on the last day


def test_duplicate_keys_are_refused_before_writing(warehouse: Warehouse) -> None:
    frame = DemoSource().market.bars(DEMO_START, DEMO_START)
    with pytest.raises(ValueError, match="duplicate"), warehouse.begin() as connection:
        upsert_frame(connection, schema.daily_bar, pd.concat([frame, frame.iloc[:1]]))
