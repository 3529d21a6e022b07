"""The `agrees_with_second_source` checks: sampled rows compared with the second source.

baostock is the primary, Tushare the second source, both real clients against loopback servers
serving the same market; Tushare scales every factor by 3 (the real services scale cumulative
factors differently), so only factor jumps are comparable.
"""

import datetime as dt

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from stocksync_dagster.core import reconcile
from stocksync_dagster.core.sources.demo_market import DemoMarket
from stocksync_dagster.core.warehouse import Warehouse
from stocksync_dagster.defs.market.assets import market_data
from stocksync_dagster.defs.market.reconcile import CHECK_NAME, second_source_checks
from stocksync_dagster.defs.reference.assets import stock_basic, trade_calendar
from stocksync_dagster.resources import (
    BaostockSourceResource,
    DemoSourceResource,
    FallbackSourceResource,
    TushareSourceResource,
    WarehouseResource,
)
from tests.conftest import DEMO_END, DEMO_START
from tests.fakes.baostock_server import FakeBaostockServer
from tests.fakes.tushare_server import FakeTushareServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180), pytest.mark.usefixtures("no_faults")]

START, END = dt.date(2025, 3, 3), dt.date(2025, 3, 7)
TOKEN = "tok-reconcile-5e0b11c3f8"
WRONG_CLOSE_DAY = dt.date(2025, 3, 5)
FACTOR_JUMP_DAY = dt.date(2025, 3, 6)
EVERY_PAIR = {"sample_size": 10_000}


MARKET_STOCKS = 40
TUSHARE_OPTIONS = {"factor_scale": 3.0}  # Tushare scales factors unlike baostock


def two_sources(baostock: FakeBaostockServer, tushare: FakeTushareServer) -> FallbackSourceResource:
    return FallbackSourceResource(
        primary=BaostockSourceResource(
            server=baostock.address, workers=2, call_timeout_seconds=2.0, max_attempts=2
        ),
        fallback=TushareSourceResource(
            tokens=TOKEN, api_url=tushare.url, call_timeout_seconds=2.0, max_attempts=2
        ),
    )


def run_with_checks(
    source: dg.ConfigurableResource,
    url: str,
    check_config: dict | None = None,
    start: dt.date = START,
    end: dt.date = END,
) -> dg.ExecuteInProcessResult:
    resources = {"source": source, "warehouse": WarehouseResource(url=url)}
    assert dg.materialize([trade_calendar, stock_basic], resources=resources).success
    return dg.materialize(
        [market_data, second_source_checks],
        resources=resources,
        tags={
            "dagster/asset_partition_range_start": start.isoformat(),
            "dagster/asset_partition_range_end": end.isoformat(),
        },
        run_config=dg.RunConfig(
            ops={"second_source_checks": {"config": check_config or EVERY_PAIR}}
        ),
    )


def evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    found = {e.asset_key.to_user_string(): e for e in result.get_asset_check_evaluations()}
    assert {e.check_name for e in found.values()} == {CHECK_NAME}
    return found


def stored_disagreements(url: str) -> pd.DataFrame:
    with Warehouse(url).connect() as connection:
        frame = pd.read_sql(
            sa.text("SELECT * FROM source_disagreement ORDER BY trade_date, code, field"),
            connection,
        )
    frame["trade_date"] = pd.to_datetime(frame["trade_date"]).dt.date
    return frame


def test_an_identical_market_passes(
    warehouse_url: str, baostock_server: FakeBaostockServer, tushare_server: FakeTushareServer
) -> None:
    result = run_with_checks(two_sources(baostock_server, tushare_server), warehouse_url)
    found = evaluations(result)
    for name in ("daily_bars", "adj_factor"):
        assert found[name].passed, found[name].description
        assert found[name].metadata["other_source"].value == "tushare"
        assert found[name].metadata["disagreements"].value == 0
    bars = found["daily_bars"].metadata
    assert bars["compared_pairs"].value == bars["sampled_pairs"].value > 0
    # factors scaled by 3 on the other side: equal jumps, on every day after the first
    assert found["adj_factor"].metadata["compared_pairs"].value > 0
    assert stored_disagreements(warehouse_url).empty


def test_a_wrong_close_and_a_wrong_factor_jump_are_named_and_stored(
    warehouse_url: str,
    market: DemoMarket,
    baostock_server: FakeBaostockServer,
    tushare_server: FakeTushareServer,
) -> None:
    codes = sorted(market.bars(START, START)["code"])
    wrong_close, wrong_jump = codes[3], codes[7]
    true_close = float(
        market.bars(WRONG_CLOSE_DAY, WRONG_CLOSE_DAY, [wrong_close])["close"].iloc[0]
    )
    tushare_server.serve_wrong(wrong_close, WRONG_CLOSE_DAY, "close", true_close * 1.01)
    tushare_server.shift_factors(wrong_jump, FACTOR_JUMP_DAY, 1.1)
    result = run_with_checks(two_sources(baostock_server, tushare_server), warehouse_url)
    assert result.success  # WARN by default: a disagreement does not fail the run
    found = evaluations(result)

    bars = found["daily_bars"]
    assert not bars.passed and bars.severity == dg.AssetCheckSeverity.WARN
    assert bars.metadata["disagreeing"].value == f"{wrong_close} {WRONG_CLOSE_DAY} close"
    assert bars.metadata["disagreements"].value == 1
    factors = found["adj_factor"]
    assert not factors.passed and factors.severity == dg.AssetCheckSeverity.WARN
    assert (
        factors.metadata["disagreeing"].value == f"{wrong_jump} {FACTOR_JUMP_DAY} adj_factor_ratio"
    )
    table = factors.metadata["disagreement_table"].value
    assert [r.data["code"] for r in table.records] == [wrong_jump]

    stored = stored_disagreements(warehouse_url)
    assert list(zip(stored["code"], stored["trade_date"], stored["field"], strict=True)) == [
        (wrong_close, WRONG_CLOSE_DAY, "close"),
        (wrong_jump, FACTOR_JUMP_DAY, "adj_factor_ratio"),
    ]
    close_row = stored.iloc[0]
    assert close_row["primary_value"] == pytest.approx(true_close)
    assert close_row["other_value"] == pytest.approx(true_close * 1.01)
    assert (close_row["primary_source"], close_row["other_source"]) == ("baostock", "tushare")
    jump_row = stored.iloc[1]
    assert jump_row["other_value"] == pytest.approx(jump_row["primary_value"] * 1.1)
    assert set(stored["run_id"]) == {result.run_id}

    # the same run again: the same two rows, not duplicates; once Tushare is right, none
    run_with_checks(two_sources(baostock_server, tushare_server), warehouse_url)
    assert len(stored_disagreements(warehouse_url)) == 2
    tushare_server.clear_faults()
    again = run_with_checks(two_sources(baostock_server, tushare_server), warehouse_url)
    assert all(e.passed for e in evaluations(again).values())
    assert stored_disagreements(warehouse_url).empty


def test_severity_error_is_configurable(
    sqlite_url: str,
    market: DemoMarket,
    baostock_server: FakeBaostockServer,
    tushare_server: FakeTushareServer,
) -> None:
    code = sorted(market.bars(START, START)["code"])[0]
    tushare_server.serve_wrong(code, START, "volume", 1.0)
    result = run_with_checks(
        two_sources(baostock_server, tushare_server),
        sqlite_url,
        {**EVERY_PAIR, "severity": "ERROR"},
    )
    bars = evaluations(result)["daily_bars"]
    assert not bars.passed and bars.severity == dg.AssetCheckSeverity.ERROR
    assert bars.metadata["disagreeing"].value == f"{code} {START} volume"


def test_with_one_source_the_check_passes_saying_there_is_nothing_to_compare(
    sqlite_url: str,
) -> None:
    result = run_with_checks(
        DemoSourceResource(stocks=20), sqlite_url, start=DEMO_START, end=DEMO_START
    )
    for evaluation in evaluations(result).values():
        assert evaluation.passed
        assert evaluation.metadata["other_source"].value == "none"
        assert "no second source" in (evaluation.description or "")


def test_the_sample_always_holds_limit_moves_and_ex_right_days_and_is_reproducible(
    sqlite_url: str,
) -> None:
    """Demo market: a sample of 5 pairs a day still holds every limit move and ex-right stock."""
    source = DemoSourceResource(stocks=300)
    resources = {"source": source, "warehouse": WarehouseResource(url=sqlite_url)}
    assert dg.materialize([trade_calendar, stock_basic], resources=resources).success
    assert dg.materialize(
        [market_data],
        resources=resources,
        tags={
            "dagster/asset_partition_range_start": DEMO_START.isoformat(),
            "dagster/asset_partition_range_end": DEMO_END.isoformat(),
        },
    ).success
    days = [dt.date(2025, 8, d) for d in (11, 12, 13, 14, 15)]
    events = source.make_source().market.events(DEMO_START, DEMO_END)  # type: ignore[attr-defined]
    notable = {
        (e.code, e.day)
        for e in events
        if e.kind in ("limit_up", "limit_down", "ex_dividend") and e.day in days
    }
    assert notable, "the demo window has limit moves and ex-dividend days"
    with Warehouse(sqlite_url).connect() as connection:
        sample = reconcile.sample_pairs(connection, days, 25, "tushare", "seed")
        again = reconcile.sample_pairs(connection, days, 25, "tushare", "seed")
        other = reconcile.sample_pairs(connection, days, 25, "tushare", "another seed")
    pairs = {(c, d) for d, codes in sample.pairs.items() for c in codes}
    assert notable <= pairs
    assert notable <= sample.notable
    assert sample.pairs == again.pairs
    assert sample.pairs != other.pairs
    random_part = pairs - sample.notable
    assert random_part and all(len(set(codes)) == len(codes) for codes in sample.pairs.values())


def test_a_range_longer_than_max_days_checks_the_last_day_and_a_seeded_choice() -> None:
    days = [dt.date(2025, 3, 3) + dt.timedelta(days=i) for i in range(30)]
    chosen = reconcile.choose_days(days, 5, "2025-03-03..2025-04-01")
    assert len(chosen) == 5 and chosen[-1] == days[-1] and set(chosen) <= set(days)
    assert chosen == reconcile.choose_days(days, 5, "2025-03-03..2025-04-01")
    assert reconcile.choose_days(days[:4], 5, "x") == days[:4]
