"""Point-in-time status: `daily_status` says, per stock and day, whether it was ST and whether it
traded, as the source said on that day (no hindsight). Against the synthetic market's truth,
through the demo source (SQLite and PostgreSQL) and the REAL baostock client on the loopback
server."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator

import pandas as pd
import pytest
import sqlalchemy as sa

from stocksync_dagster.core.sources.baostock import BaostockSource
from stocksync_dagster.core.sources.demo import DemoSource
from stocksync_dagster.core.sources.demo_market import DemoMarket
from stocksync_dagster.core.sources.tushare import TushareSource
from stocksync_dagster.core.sync import DAILY_BARS, sync_market_range
from stocksync_dagster.core.warehouse import Warehouse, daily_status, schema
from tests.fakes.baostock_server import FakeBaostockServer
from tests.fakes.tushare_server import FakeTushareServer

START, END = dt.date(2024, 1, 2), dt.date(2024, 2, 29)
KEY = ["code", "trade_date"]


def truth(market: DemoMarket, start: dt.date, end: dt.date) -> pd.DataFrame:
    """What the synthetic market says: every listed stock on every open day."""
    trading = market.bars(start, end)[KEY].assign(trade_status="trading")
    suspended = market.suspensions(start, end)[KEY].assign(trade_status="suspended")
    frame = pd.concat([trading, suspended], ignore_index=True)
    codes = market.stocks["code"].to_numpy()
    st = {(c, d) for d in set(frame["trade_date"]) for c in codes[market.is_st_on(d)]}
    frame["is_st"] = [(c, d) in st for c, d in zip(frame["code"], frame["trade_date"], strict=True)]
    return frame.sort_values(["trade_date", "code"]).reset_index(drop=True)


def stored(warehouse: Warehouse, start: dt.date, end: dt.date) -> pd.DataFrame:
    with warehouse.connect() as connection:
        frame = daily_status.statuses(connection, start, end)
    frame["trade_date"] = [pd.Timestamp(d).date() for d in frame["trade_date"]]
    frame["is_st"] = frame["is_st"].astype(bool)
    return frame[["code", "trade_date", "trade_status", "is_st"]]


def assert_nontrivial(expected: pd.DataFrame) -> None:
    """The window has suspensions and a stock that goes into (or out of) ST inside it."""
    assert (expected["trade_status"] == "suspended").any()
    changes = expected.groupby("code")["is_st"].nunique()
    assert (changes == 2).any(), "no stock changes ST status in the window"


def test_daily_status_equals_the_synthetic_market(warehouse: Warehouse) -> None:
    source = DemoSource(n_stocks=40, seed=7, as_of=END)
    expected = truth(source.market, START, END)
    assert_nontrivial(expected)
    sync_market_range(DAILY_BARS, source, warehouse, START, END)
    pd.testing.assert_frame_equal(stored(warehouse, START, END), expected[stored_columns()])
    # "was it ST that day": a stock that became ST is not ST before it did
    cycling = expected.groupby("code")["is_st"].nunique()
    code = str(cycling[cycling == 2].index[0])
    days = expected[expected["code"] == code]
    first_st = days[days["is_st"]]["trade_date"].min()
    first_day = days["trade_date"].min()
    with warehouse.connect() as connection:
        c = schema.daily_status.c
        was_st = dict(
            connection.execute(
                sa.select(c.trade_date, c.is_st).where(
                    c.code == code, c.trade_date.in_([first_day, first_st])
                )
            ).all()
        )
    assert {pd.Timestamp(k).date(): bool(v) for k, v in was_st.items()} == (
        {first_st: True} if first_st == first_day else {first_day: False, first_st: True}
    )


def stored_columns() -> list[str]:
    return ["code", "trade_date", "trade_status", "is_st"]


def test_a_repair_of_some_codes_replaces_only_their_status(warehouse: Warehouse) -> None:
    source = DemoSource(n_stocks=40, seed=7, as_of=END)
    sync_market_range(DAILY_BARS, source, warehouse, START, END)
    before = stored(warehouse, START, END)
    code = str(before["code"].iloc[0])
    sync_market_range(DAILY_BARS, source, warehouse, START, END, codes=[code])
    pd.testing.assert_frame_equal(stored(warehouse, START, END), before)


@pytest.fixture(scope="module")
def baostock_market() -> DemoMarket:
    return DemoMarket(40, seed=7, origin=START)


@pytest.fixture(scope="module")
def baostock_source(baostock_market: DemoMarket) -> Iterator[BaostockSource]:
    with (
        FakeBaostockServer(baostock_market, as_of=dt.date(2024, 3, 29)) as server,
        BaostockSource(
            server=("127.0.0.1", server.port), workers=2, call_timeout_seconds=5
        ) as source,
    ):
        yield source


@pytest.mark.timeout(120)
def test_baostock_isst_and_tradestatus_become_daily_status(
    baostock_source: BaostockSource, baostock_market: DemoMarket, sqlite_url: str
) -> None:
    expected = truth(baostock_market, START, END)
    assert_nontrivial(expected)
    result = baostock_source.daily_bars(START, END)
    assert result.st is not None
    assert set(zip(result.st["code"], result.st["trade_date"], strict=True)) == set(
        zip(*[expected.loc[expected["is_st"], k] for k in KEY], strict=True)
    )
    warehouse = Warehouse(sqlite_url)
    sync_market_range(DAILY_BARS, baostock_source, warehouse, START, END)
    pd.testing.assert_frame_equal(stored(warehouse, START, END), expected[stored_columns()])
    with warehouse.connect() as connection:
        sources = connection.execute(sa.select(schema.daily_status.c.source).distinct()).all()
    assert sources == [("baostock",)]
    warehouse.dispose()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("page", [6000, 7], ids=["one-page", "paged"])
def test_tushare_namechange_and_suspend_d_become_daily_status(
    baostock_market: DemoMarket, sqlite_url: str, page: int
) -> None:
    expected = truth(baostock_market, START, END)
    assert_nontrivial(expected)
    with FakeTushareServer(baostock_market, as_of=dt.date(2024, 3, 29)) as fake:
        source = TushareSource(["tok-pit-0123456789"], api_url=fake.url, backoff_seconds=0.01)
        source.namechange_page = page
        warehouse = Warehouse(sqlite_url)
        sync_market_range(DAILY_BARS, source, warehouse, START, END)
        pd.testing.assert_frame_equal(stored(warehouse, START, END), expected[stored_columns()])
        pages = [c for c in fake.calls if c.api == "namechange"]
        assert len(pages) == (1 if page == 6000 else math.ceil(fake_rows(fake) / page))
        # announced after the range: not known then (no hindsight)
        assert all(c.params["end_date"] == END.strftime("%Y%m%d") for c in pages)
        warehouse.dispose()


def fake_rows(fake: FakeTushareServer) -> int:
    # a full last page triggers one more (empty) request
    rows = len(fake.market.name_history(END))
    return rows + (1 if rows % 7 == 0 else 0)


def test_namechange_without_st_periods_fails_soft(
    baostock_market: DemoMarket, sqlite_url: str
) -> None:
    """namechange down: the bars still sync, ST is NULL (not reported), trading status kept."""
    with FakeTushareServer(baostock_market, as_of=dt.date(2024, 3, 29)) as fake:
        fake.inject("error", api="namechange", times=None)
        source = TushareSource(
            ["tok-pit-0123456789"], api_url=fake.url, backoff_seconds=0.01, max_attempts=2
        )
        result = source.daily_bars(START, END)
        assert result.st is None and len(result.frame)
        warehouse = Warehouse(sqlite_url)
        sync_market_range(DAILY_BARS, source, warehouse, START, END)
        with warehouse.connect() as connection:
            frame = daily_status.statuses(connection, START, END)
        assert frame["is_st"].isna().all()
        assert set(frame["trade_status"]) == {"trading", "suspended"}
        warehouse.dispose()


def test_a_warehouse_at_0002_upgrades_with_the_history_tables(tmp_path) -> None:
    from alembic import command
    from alembic.config import Config

    from stocksync_dagster.core.warehouse import engine as warehouse_engine

    new = {"daily_status", "daily_bar_revision", "adj_factor_revision"}
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = sa.create_engine(url)
    with old.begin() as connection:
        later = new | {"source_disagreement"}  # 0003 adds it and the `source` columns
        tables = [t for t in schema.metadata.sorted_tables if t.name not in later]
        schema.metadata.create_all(connection, tables=tables)
        for table in ("daily_bar", "adj_factor"):
            connection.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN source")
        config = Config()
        config.set_main_option("script_location", str(warehouse_engine._MIGRATIONS))
        config.attributes["connection"] = connection
        command.stamp(config, "0002_suspension")
    old.dispose()
    assert not new & set(sa.inspect(sa.create_engine(url)).get_table_names())
    warehouse = Warehouse(url)
    warehouse.ensure_schema()
    assert warehouse.schema_version() == "0004_history"
    assert new <= set(sa.inspect(warehouse.engine).get_table_names())
    columns = {c["name"] for c in sa.inspect(warehouse.engine).get_columns("daily_status")}
    assert columns == {"code", "trade_date", "is_st", "trade_status", "source"}
    warehouse.dispose()


class LosingSource(DemoSource):
    """The demo market whose whole-market reply loses one ST stock's bar (and its ST flag);
    the per-stock re-fetch of the sync gets it back."""

    def __init__(self, lost: tuple[str, dt.date]) -> None:
        super().__init__(n_stocks=40, seed=7, as_of=END)
        self.lost = lost

    def daily_bars(self, start, end, codes=None):  # type: ignore[no-untyped-def]
        result = super().daily_bars(start, end, codes)
        if codes is None:
            keep = [
                (c, d) != self.lost for c, d in zip(*[result.frame[k] for k in KEY], strict=True)
            ]
            result.frame = result.frame[keep].reset_index(drop=True)
            assert result.st is not None
            keep_st = [
                (c, d) != self.lost for c, d in zip(*[result.st[k] for k in KEY], strict=True)
            ]
            result.st = result.st[keep_st].reset_index(drop=True)
        return result


def test_a_bar_recovered_by_the_refetch_keeps_its_st_flag(sqlite_url: str) -> None:
    market = DemoSource(n_stocks=40, seed=7, as_of=END).market
    expected = truth(market, START, END)
    st_trading = expected[expected["is_st"] & (expected["trade_status"] == "trading")]
    lost = (str(st_trading["code"].iloc[0]), st_trading["trade_date"].iloc[0])
    warehouse = Warehouse(sqlite_url)
    report = sync_market_range(DAILY_BARS, LosingSource(lost), warehouse, START, END)
    assert report.refetched == 1 and not report.failures
    pd.testing.assert_frame_equal(stored(warehouse, START, END), expected[stored_columns()])
    warehouse.dispose()
