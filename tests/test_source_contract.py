"""The contract across sources, through Dagster: baostock and tushare (real clients, loopback
servers serving the same synthetic market) write identical rows, equal to the market; what
cannot be fetched lands in `sync_failure` and heals on a later fetch.
"""

import datetime as dt
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from stocksync_dagster.core.sources.demo_market import DemoMarket
from stocksync_dagster.core.warehouse import Warehouse
from stocksync_dagster.defs.market.assets import market_data
from stocksync_dagster.defs.market.jobs import range_tags as market_range_tags
from stocksync_dagster.resources import (
    BaostockSourceResource,
    TushareSourceResource,
    WarehouseResource,
)
from tests.fakes.baostock_server import FakeBaostockServer
from tests.fakes.tushare_server import FakeTushareServer
from tests.loopback_market import ORIGIN
from tests.support import market_sync_command, materializations

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120), pytest.mark.usefixtures("no_faults")]

START, END = dt.date(2025, 3, 3), dt.date(2025, 3, 21)
TOKEN = "tok-contract-4b1d2e9f0a77"


def range_tags(start: dt.date = START, end: dt.date = END) -> dict[str, str]:
    return market_range_tags(start.isoformat(), end.isoformat())


def baostock_resource(server: FakeBaostockServer) -> BaostockSourceResource:
    return BaostockSourceResource(
        server=server.address,
        workers=3,
        call_timeout_seconds=2.0,
        max_attempts=2,
        backoff_seconds=0.05,
    )


def tushare_resource(server: FakeTushareServer) -> TushareSourceResource:
    return TushareSourceResource(
        tokens=TOKEN,
        api_url=server.url,
        call_timeout_seconds=2.0,
        max_attempts=2,
        backoff_seconds=0.05,
    )


def read(url: str, table: str) -> pd.DataFrame:
    """A table's rows; market tables without `source` (see `sources`)."""
    with Warehouse(url).connect() as connection:
        frame = pd.read_sql(sa.text(f"SELECT * FROM {table} ORDER BY trade_date, code"), connection)
    frame["trade_date"] = pd.to_datetime(frame["trade_date"]).dt.date
    return frame.drop(columns="source") if table in ("daily_bar", "adj_factor") else frame


def sources(url: str, table: str) -> set[str]:
    with Warehouse(url).connect() as connection:
        return {s for (s,) in connection.execute(sa.text(f"SELECT DISTINCT source FROM {table}"))}


def expected(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.sort_values(["trade_date", "code"]).reset_index(drop=True)
    if "volume" in frame:
        frame["volume"] = frame["volume"].astype("int64")
    return frame


def materialize(resource: dg.ConfigurableResource, url: str, **kwargs) -> dg.ExecuteInProcessResult:
    resources = {"source": resource, "warehouse": WarehouseResource(url=url)}
    return dg.materialize(
        [market_data],
        resources=resources,
        tags=kwargs.pop("tags", range_tags()),
        raise_on_error=False,
        **kwargs,
    )


def failures(url: str) -> pd.DataFrame:
    with Warehouse(url).connect() as connection:
        return pd.read_sql(
            sa.text("SELECT * FROM sync_failure ORDER BY trade_date, code"), connection
        )


def test_both_sources_write_the_same_rows_as_the_market(
    warehouse_url: str, market: DemoMarket, baostock_server, tushare_server, tmp_path: Path
) -> None:
    assert materialize(baostock_resource(baostock_server), warehouse_url).success
    by_baostock = {t: read(warehouse_url, t) for t in ("daily_bar", "adj_factor")}
    tushare_url = f"sqlite:///{tmp_path / 'tushare.db'}"
    assert materialize(tushare_resource(tushare_server), tushare_url).success
    by_tushare = {t: read(tushare_url, t) for t in ("daily_bar", "adj_factor")}
    for table in ("daily_bar", "adj_factor"):
        assert sources(warehouse_url, table) == {"baostock"}
        assert sources(tushare_url, table) == {"tushare"}
    pd.testing.assert_frame_equal(
        by_baostock["daily_bar"], by_tushare["daily_bar"], check_dtype=False
    )
    pd.testing.assert_frame_equal(
        by_baostock["adj_factor"], by_tushare["adj_factor"], check_dtype=False
    )
    pd.testing.assert_frame_equal(
        by_baostock["daily_bar"], expected(market.bars(START, END)), check_dtype=False
    )
    pd.testing.assert_frame_equal(
        by_baostock["adj_factor"], expected(market.adj_factors(START, END)), check_dtype=False
    )


def test_a_stock_that_keeps_failing_is_recorded_then_repaired(
    sqlite_url: str, market: DemoMarket, baostock_server: FakeBaostockServer
) -> None:
    victim = sorted(market.bars(START, START)["code"])[5]
    baostock_server.inject("drop", call="query_history_k_data_plus", code=victim, times=None)
    tolerant = {"config": {"max_failed_share": 0.05}}
    result = materialize(
        baostock_resource(baostock_server),
        sqlite_url,
        run_config=dg.RunConfig(ops={"market_data": tolerant}),
    )
    assert result.success  # 1 of ~48 stocks (2%) is below a max_failed_share of 5%
    metadata = materializations(result, "daily_bars")[0].metadata
    assert metadata["failed_stocks"].value == 1 and victim in metadata["failed_codes"].value
    open_rows = failures(sqlite_url)
    assert set(open_rows["code"]) == {victim}
    assert set(open_rows["status"]) == {"pending"}
    assert victim not in set(read(sqlite_url, "daily_bar")["code"])

    baostock_server.clear_faults()
    config = dg.RunConfig(ops={"market_data": {"config": {"codes": [victim]}}})
    repair = materialize(
        baostock_resource(baostock_server),
        sqlite_url,
        run_config=config,
        selection=["daily_bars"],
    )
    assert repair.success
    assert set(failures(sqlite_url).query("asset == 'daily_bars'")["status"]) == {"resolved"}
    stored = read(sqlite_url, "daily_bar")
    pd.testing.assert_frame_equal(stored, expected(market.bars(START, END)), check_dtype=False)


def test_a_day_that_keeps_failing_fails_the_step_after_writing_the_rest(
    sqlite_url: str, market: DemoMarket, tushare_server: FakeTushareServer
) -> None:
    bad_day = dt.date(2025, 3, 12)
    tushare_server.inject("http500", api="daily", trade_date=bad_day, times=None)
    result = materialize(tushare_resource(tushare_server), sqlite_url, selection=["daily_bars"])
    assert not result.success  # a whole missing day is never a success
    rows = read(sqlite_url, "daily_bar")
    assert bad_day not in set(rows["trade_date"]) and len(set(rows["trade_date"])) == 14
    recorded = failures(sqlite_url)
    assert list(recorded["code"]) == ["*"] and str(recorded["trade_date"][0]) == "2025-03-12"

    tushare_server.clear_faults()
    again = materialize(
        tushare_resource(tushare_server),
        sqlite_url,
        selection=["daily_bars"],
        tags=range_tags(bad_day, bad_day),
    )
    assert again.success
    assert list(failures(sqlite_url)["status"]) == ["resolved"]
    pd.testing.assert_frame_equal(
        read(sqlite_url, "daily_bar"), expected(market.bars(START, END)), check_dtype=False
    )


def _cli_materialize(tmp_path: Path, env: dict[str, str]) -> sqlite3.Connection:
    database = tmp_path / "cli.db"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSYNC_")}
    environment.update(
        DAGSTER_HOME=str(tmp_path),
        STOCKSYNC_DATABASE_URL=f"sqlite:///{database}",
        STOCKSYNC_START_DATE=ORIGIN.isoformat(),
        **env,
    )
    command = market_sync_command(str(Path(sys.executable).with_name("dagster")), START, END)
    done = subprocess.run(
        command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=110
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return sqlite3.connect(database)


def test_dagster_cli_with_baostock(tmp_path: Path, market: DemoMarket, baostock_server) -> None:
    connection = _cli_materialize(
        tmp_path, {"STOCKSYNC_SOURCE": "baostock", "BAOSTOCK_SERVER": baostock_server.address}
    )
    count = connection.execute("SELECT count(*) FROM daily_bar").fetchone()[0]
    assert count == len(market.bars(START, END))


def test_dagster_cli_with_tushare(tmp_path: Path, market: DemoMarket, tushare_server) -> None:
    connection = _cli_materialize(
        tmp_path,
        {
            "STOCKSYNC_SOURCE": "tushare",
            "TUSHARE_TOKEN": TOKEN,
            "TUSHARE_API_URL": tushare_server.url,
        },
    )
    count = connection.execute("SELECT count(*) FROM adj_factor").fetchone()[0]
    assert count == len(market.adj_factors(START, END))
