"""STOCKSYNC_SOURCE=baostock,tushare: Tushare fills what baostock could not fetch.

Real clients against the loopback servers, through Dagster materializations. The baostock
server fails 10% of the stocks on every call and leaves out one whole day; the warehouse must
still equal the market exactly, with `source` saying which rows came from Tushare.
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

from stocksync_dagster.core.errors import ConfigError
from stocksync_dagster.core.settings import Settings
from stocksync_dagster.core.sources.demo_market import DemoMarket
from stocksync_dagster.core.warehouse import Warehouse
from stocksync_dagster.defs.market.assets import market_data
from stocksync_dagster.defs.market.jobs import range_tags as market_range_tags
from stocksync_dagster.defs.resources import source_resource
from stocksync_dagster.resources import (
    BaostockSourceResource,
    FallbackSourceResource,
    TushareSourceResource,
    WarehouseResource,
)
from tests.fakes.baostock_server import FakeBaostockServer
from tests.fakes.tushare_server import FakeTushareServer
from tests.loopback_market import AS_OF, ORIGIN
from tests.support import market_sync_command

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180), pytest.mark.usefixtures("no_faults")]

START, END = dt.date(2025, 3, 3), dt.date(2025, 3, 21)
LOST_DAY = dt.date(2025, 3, 12)
TOKEN = "tok-fallback-77c1e0a9d2"


@pytest.fixture
def lost_codes(market: DemoMarket) -> list[str]:
    """10% of the stocks trading in the range: baostock fails every call for them."""
    codes = sorted(set(market.bars(START, END)["code"]))
    return codes[:: len(codes) // max(len(codes) // 10, 1)][: max(len(codes) // 10, 1)]


def fallback_resource(
    baostock: FakeBaostockServer, tushare: FakeTushareServer
) -> FallbackSourceResource:
    return FallbackSourceResource(
        primary=BaostockSourceResource(
            server=baostock.address,
            workers=3,
            call_timeout_seconds=2.0,
            max_attempts=2,
            backoff_seconds=0.05,
        ),
        fallback=TushareSourceResource(
            tokens=TOKEN,
            api_url=tushare.url,
            call_timeout_seconds=2.0,
            max_attempts=2,
            backoff_seconds=0.05,
        ),
    )


def range_tags(start: dt.date = START, end: dt.date = END) -> dict[str, str]:
    return market_range_tags(start.isoformat(), end.isoformat())


def materialize(resource: dg.ConfigurableResource, url: str, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [market_data],
        resources={"source": resource, "warehouse": WarehouseResource(url=url)},
        tags=range_tags(),
        raise_on_error=False,
        **kwargs,
    )


def read(url: str, table: str) -> pd.DataFrame:
    with Warehouse(url).connect() as connection:
        frame = pd.read_sql(sa.text(f"SELECT * FROM {table} ORDER BY trade_date, code"), connection)
    frame["trade_date"] = pd.to_datetime(frame["trade_date"]).dt.date
    return frame


def expected(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.sort_values(["trade_date", "code"]).reset_index(drop=True)
    if "volume" in frame:
        frame["volume"] = frame["volume"].astype("int64")
    return frame


def from_tushare(frame: pd.DataFrame, lost_codes: list[str]) -> pd.Series:
    """Where each row must have come from: Tushare for the lost stocks and the lost day."""
    return pd.Series(
        [
            "tushare" if code in lost_codes or day == LOST_DAY else "baostock"
            for code, day in zip(frame["code"], frame["trade_date"], strict=True)
        ],
        name="source",
    )


def test_tushare_fills_failed_stocks_and_a_lost_day_exactly(
    warehouse_url: str,
    market: DemoMarket,
    baostock_server: FakeBaostockServer,
    tushare_server: FakeTushareServer,
    lost_codes: list[str],
) -> None:
    baostock_server.fail_codes(lost_codes)
    baostock_server.omit_day(LOST_DAY)
    result = materialize(fallback_resource(baostock_server, tushare_server), warehouse_url)
    assert result.success

    for table, rows in (
        ("daily_bar", market.bars(START, END)),
        ("adj_factor", market.adj_factors(START, END)),
    ):
        stored = read(warehouse_url, table)
        pd.testing.assert_frame_equal(
            stored.drop(columns="source"), expected(rows), check_dtype=False
        )
        pd.testing.assert_series_equal(stored["source"], from_tushare(stored, lost_codes))
    suspended = read(warehouse_url, "suspension")
    pd.testing.assert_frame_equal(
        suspended[["code", "trade_date"]],
        expected(market.suspensions(START, END))[["code", "trade_date"]],
    )
    assert read(warehouse_url, "sync_failure").empty

    by_day = {m.partition: m.metadata for m in bars_materializations(result)}
    lost = by_day[LOST_DAY.isoformat()]
    assert "rows_from_baostock" not in lost
    assert lost["rows_from_tushare"].value == len(market.bars(LOST_DAY, LOST_DAY))
    normal = by_day["2025-03-05"]
    day_codes = set(market.bars(dt.date(2025, 3, 5), dt.date(2025, 3, 5))["code"])
    assert normal["rows_from_tushare"].value == len(day_codes & set(lost_codes))
    assert normal["rows_from_baostock"].value == len(day_codes - set(lost_codes))
    bars = read(warehouse_url, "daily_bar")
    assert normal["run_rows_from_tushare"].value == int((bars["source"] == "tushare").sum())
    assert normal["run_rows_from_baostock"].value == int((bars["source"] == "baostock").sum())


def test_a_stock_both_sources_lack_is_recorded_naming_both(
    sqlite_url: str,
    market: DemoMarket,
    baostock_server: FakeBaostockServer,
    tushare_server: FakeTushareServer,
    lost_codes: list[str],
) -> None:
    victim = lost_codes[0]
    baostock_server.fail_codes(lost_codes)
    tushare_server.drop_codes([victim])
    tolerant = {"config": {"max_failed_share": 0.05}}
    result = materialize(
        fallback_resource(baostock_server, tushare_server),
        sqlite_url,
        run_config=dg.RunConfig(ops={"market_data": tolerant}),
    )
    assert result.success  # 1 stock of ~50 is within a max_failed_share of 5%
    recorded = read(sqlite_url, "sync_failure")
    assert set(recorded["code"]) == {victim}
    assert set(recorded["asset"]) == {"daily_bars", "adj_factor"}
    assert set(recorded["status"]) == {"pending"}
    assert all("baostock" in e and "tushare" in e for e in recorded["error"])
    traded = market.bars(START, END)
    assert set(recorded.query("asset == 'daily_bars'")["trade_date"]) == set(
        traded.loc[traded["code"] == victim, "trade_date"]
    )
    stored = read(sqlite_url, "daily_bar")
    assert victim not in set(stored["code"])
    others = traded[traded["code"] != victim]
    pd.testing.assert_frame_equal(
        stored.drop(columns="source"), expected(others), check_dtype=False
    )
    metadata = bars_materializations(result)[0].metadata
    assert victim in metadata["failed_codes"].value


def test_one_source_labels_its_rows_and_never_asks_another(
    sqlite_url: str,
    market: DemoMarket,
    baostock_server: FakeBaostockServer,
    tushare_server: FakeTushareServer,
) -> None:
    resource = BaostockSourceResource(
        server=baostock_server.address, workers=3, call_timeout_seconds=2.0, max_attempts=2
    )
    before = len(tushare_server.calls)
    assert materialize(resource, sqlite_url).success
    assert len(tushare_server.calls) == before
    stored = read(sqlite_url, "daily_bar")
    assert set(stored["source"]) == {"baostock"}
    assert len(stored) == len(market.bars(START, END))


def test_the_cli_with_two_sources_and_faults_writes_the_exact_market(
    tmp_path: Path,
    market: DemoMarket,
    baostock_server: FakeBaostockServer,
    tushare_server: FakeTushareServer,
    lost_codes: list[str],
) -> None:
    """What a user runs: `dagster job execute` of a range with STOCKSYNC_SOURCE=baostock,tushare."""
    baostock_server.fail_codes(lost_codes)
    baostock_server.omit_day(LOST_DAY)
    database = tmp_path / "cli.db"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSYNC_")}
    environment.update(
        DAGSTER_HOME=str(tmp_path),
        STOCKSYNC_DATABASE_URL=f"sqlite:///{database}",
        STOCKSYNC_START_DATE=ORIGIN.isoformat(),
        STOCKSYNC_SOURCE="baostock,tushare",
        BAOSTOCK_SERVER=baostock_server.address,
        TUSHARE_TOKEN=TOKEN,
        TUSHARE_API_URL=tushare_server.url,
    )
    command = market_sync_command(str(Path(sys.executable).with_name("dagster")), START, END)
    done = subprocess.run(
        command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=150
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert TOKEN not in done.stdout + done.stderr
    with sqlite3.connect(database) as connection:
        stored = pd.read_sql("SELECT * FROM daily_bar ORDER BY trade_date, code", connection)
    stored["trade_date"] = pd.to_datetime(stored["trade_date"]).dt.date
    pd.testing.assert_frame_equal(
        stored.drop(columns="source"), expected(market.bars(START, END)), check_dtype=False
    )
    pd.testing.assert_series_equal(stored["source"], from_tushare(stored, lost_codes))


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("baostock,baostock", "given twice"),
        ("baostock,demo", "demo cannot be combined"),
        ("baostock,tushare,demo", "3 sources"),
        ("baostock,", "empty source name"),
        ("baostock,akshare", "unknown source 'akshare'"),
    ],
)
def test_bad_source_lists_name_the_setting(value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match="STOCKSYNC_SOURCE") as raised:
        Settings.from_env({"STOCKSYNC_SOURCE": value})
    assert problem in str(raised.value)


def test_an_ordered_pair_builds_a_fallback_resource_of_two_sources() -> None:
    settings = Settings.from_env(
        {"STOCKSYNC_SOURCE": " Tushare , baostock ", "BAOSTOCK_SERVER": "127.0.0.1:10030"}
    )
    assert settings.sources == ("tushare", "baostock")
    resource = source_resource(settings)
    assert isinstance(resource, FallbackSourceResource)
    assert isinstance(resource.primary, TushareSourceResource)
    assert isinstance(resource.fallback, BaostockSourceResource)
    assert resource.fallback.server == "127.0.0.1:10030"
    single = source_resource(Settings.from_env({"STOCKSYNC_SOURCE": "baostock"}))
    assert isinstance(single, BaostockSourceResource)


def test_a_warehouse_of_the_previous_version_gains_the_columns_and_keeps_its_rows(
    warehouse_url: str,
) -> None:
    """0002 -> 0003: existing rows keep `source` NULL, the views work, a re-fetch labels rows."""
    from alembic import command
    from alembic.config import Config

    from stocksync_dagster.core import sync
    from stocksync_dagster.core.sources.demo import DemoSource
    from stocksync_dagster.core.warehouse import engine as warehouse_engine

    warehouse = Warehouse(warehouse_url)
    warehouse.ensure_schema()
    config = Config()
    config.set_main_option("script_location", str(warehouse_engine._MIGRATIONS))
    day = dt.date(2025, 8, 5)
    try:
        with warehouse.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0002_suspension")
        columns = {c["name"] for c in sa.inspect(warehouse.engine).get_columns("daily_bar")}
        assert "source" not in columns
        with warehouse.engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO daily_bar (code, trade_date, open, high, low, close, volume, "
                    "amount) VALUES ('600000.SH', :d, 10, 11, 9, 10.5, 100, 1050)"
                ),
                {"d": day},
            )
            connection.execute(
                sa.text(
                    "INSERT INTO adj_factor (code, trade_date, adj_factor) "
                    "VALUES ('600000.SH', :d, 2.0)"
                ),
                {"d": day},
            )
    finally:
        warehouse_engine._ready.discard(warehouse_url)
        warehouse.ensure_schema()  # upgrades to the head
    assert warehouse.schema_version() == "0004_history"
    with warehouse.connect() as connection:
        old = connection.execute(sa.text("SELECT source FROM daily_bar")).scalar_one()
        hfq = connection.execute(sa.text("SELECT close FROM daily_bar_hfq")).scalar_one()
        table = sa.inspect(connection).get_table_names()
    assert old is None and hfq == pytest.approx(21.0)
    assert "source_disagreement" in table
    report = sync.sync_market_range(sync.DAILY_BARS, DemoSource(), warehouse, day, day)
    assert report.run_rows_by_source == {"demo": report.stats.inserted + report.stats.updated}
    with warehouse.connect() as connection:
        labels = {s for (s,) in connection.execute(sa.text("SELECT source FROM daily_bar"))}
    assert labels == {"demo", None}  # the old row is not in the demo market: untouched


@pytest.mark.postgres
def test_mixed_source_rows_copy_into_postgres_and_rerun_untouched(
    postgres_server_url: str,
) -> None:
    """`baostock` and `tushare` differ in length: the row-wise COPY path, then the anti-join."""
    from stocksync_dagster.core.sources.demo import DemoSource
    from stocksync_dagster.core.warehouse import schema
    from stocksync_dagster.core.warehouse.upsert import UpsertStats, upsert_frame
    from tests.conftest import DEMO_END, DEMO_START, _truncate

    warehouse = Warehouse(postgres_server_url)
    warehouse.ensure_schema()
    _truncate(warehouse)
    frame = DemoSource().market.bars(DEMO_START, DEMO_END)
    frame["source"] = ["tushare" if i % 7 == 0 else "baostock" for i in range(len(frame))]
    with warehouse.begin() as connection:
        assert upsert_frame(connection, schema.daily_bar, frame) == UpsertStats(len(frame), 0, 0)
    with warehouse.begin() as connection:
        assert upsert_frame(connection, schema.daily_bar, frame) == UpsertStats(0, 0, len(frame))
    relabelled = frame.copy()
    relabelled.loc[relabelled.index[1:5], "source"] = "tushare"  # same values, another source
    changed = int((relabelled["source"] != frame["source"]).sum())
    assert changed == 4
    with warehouse.begin() as connection:
        stats = upsert_frame(connection, schema.daily_bar, relabelled)
    assert stats == UpsertStats(0, changed, len(frame) - changed)
    with warehouse.connect() as connection:
        counts = dict(
            connection.execute(
                sa.text("SELECT source, count(*) FROM daily_bar GROUP BY source")
            ).all()
        )
    assert counts == relabelled["source"].value_counts().to_dict()


def test_a_filled_day_continues_the_primary_factor_scale(
    sqlite_url: str,
    market: DemoMarket,
    baostock_server: FakeBaostockServer,
    lost_codes: list[str],
) -> None:
    """Tushare's factors are 3x baostock's here: a lost day is rescaled on the nearest day
    baostock served; a stock baostock never served keeps Tushare's scale (documented)."""
    with FakeTushareServer(
        market, valid_tokens=[TOKEN], as_of=AS_OF, hang_seconds=10, factor_scale=3.0
    ) as scaled:
        baostock_server.fail_codes(lost_codes)
        baostock_server.omit_day(LOST_DAY)
        result = materialize(
            fallback_resource(baostock_server, scaled), sqlite_url, selection=["adj_factor"]
        )
    assert result.success
    stored = read(sqlite_url, "adj_factor")
    truth = expected(market.adj_factors(START, END))
    assert (stored["source"] == from_tushare(stored, lost_codes)).all()
    lost = stored["code"].isin(lost_codes).to_numpy()
    ratio = stored["adj_factor"].to_numpy() / truth["adj_factor"].to_numpy()
    assert ratio[~lost] == pytest.approx(1.0, rel=1e-12)  # the lost day included
    assert ratio[lost] == pytest.approx(3.0, rel=1e-12)


def bars_materializations(result: dg.ExecuteInProcessResult) -> list[dg.AssetMaterialization]:
    """The `daily_bars` materializations of the market step (which also makes `adj_factor`'s)."""
    return [
        m
        for m in result.asset_materializations_for_node("market_data")
        if m.asset_key == dg.AssetKey("daily_bars")
    ]
