"""Assets through Dagster: range runs fetch once, closed days succeed with zero rows, metadata."""

import datetime as dt

import dagster as dg
import pandas as pd
import pytest

from stocksync_dagster.core.sources.demo import DemoSource
from stocksync_dagster.core.warehouse import Warehouse
from stocksync_dagster.defs.market.assets import build_market_assets
from stocksync_dagster.defs.market.partitions import trading_day_partitions
from stocksync_dagster.defs.reference.assets import build_reference_assets
from stocksync_dagster.resources import DemoSourceResource, WarehouseResource
from tests.conftest import DEMO_END, DEMO_START

PARTITIONS = trading_day_partitions(dt.date(2025, 1, 2))
# No step retries here: a retried failure would wait out the production backoff.
MARKET = build_market_assets(PARTITIONS, retry_policy=dg.RetryPolicy(max_retries=0))
REFERENCE = build_reference_assets(dt.date(2025, 1, 2))
RANGE = {
    "dagster/asset_partition_range_start": DEMO_START.isoformat(),
    "dagster/asset_partition_range_end": DEMO_END.isoformat(),
}


def materializations(
    result: dg.ExecuteInProcessResult, asset: str
) -> list[dg.AssetMaterialization]:
    return [m for m in result.asset_materializations_for_node(asset)]


def count(url: str, sql: str) -> int:
    with Warehouse(url).connect() as connection:
        return connection.exec_driver_sql(sql).scalar_one()


def test_range_run_materializes_every_partition_with_one_fetch(
    warehouse_url: str, monkeypatch
) -> None:
    calls: list[tuple[dt.date, dt.date]] = []
    original = DemoSource.daily_bars

    def counting(self, start, end, codes=None):  # type: ignore[no-untyped-def]
        calls.append((start, end))
        return original(self, start, end, codes)

    monkeypatch.setattr(DemoSource, "daily_bars", counting)
    resources = {"source": DemoSourceResource(), "warehouse": WarehouseResource(url=warehouse_url)}
    with dg.instance_for_test() as instance:
        result = dg.materialize([*MARKET], instance=instance, resources=resources, tags=RANGE)
        assert result.success
        keys = instance.get_materialized_partitions(dg.AssetKey("daily_bars"))
    assert calls == [(DEMO_START, DEMO_END)]
    assert len(keys) == 20 and min(keys) == DEMO_START.isoformat()
    metadata = materializations(result, "daily_bars")[0].metadata
    expected_rows = len(DemoSource().market.bars(DEMO_START, DEMO_END))
    assert (
        metadata["rows"].value
        == expected_rows
        == count(warehouse_url, "SELECT count(*) FROM daily_bar")
    )
    assert metadata["days"].value == 20
    assert metadata["market_open"].value is True
    assert "preview" in metadata and "rows_per_day" in metadata


def test_reference_assets_fill_calendar_and_master(sqlite_url: str) -> None:
    resources = {"source": DemoSourceResource(), "warehouse": WarehouseResource(url=sqlite_url)}
    result = dg.materialize(REFERENCE, resources=resources)
    assert result.success
    assert count(sqlite_url, "SELECT count(*) FROM stock_basic") > 250
    assert (
        count(
            sqlite_url,
            "SELECT count(*) FROM trade_calendar WHERE cal_date = '2025-10-01' AND is_open",
        )
        == 0
    )
    assert (
        count(
            sqlite_url,
            "SELECT count(*) FROM trade_calendar WHERE cal_date = '2025-10-09' AND is_open",
        )
        == 1
    )


class ClosedMarket(DemoSource):
    """A source whose calendar says every day was closed (e.g. an unscheduled closure)."""

    def trade_calendar(self, start, end):  # type: ignore[no-untyped-def]
        frame = super().trade_calendar(start, end)
        frame["is_open"] = False
        return frame


class ClosedMarketResource(DemoSourceResource):
    def open(self) -> DemoSource:
        return ClosedMarket()


def test_a_day_the_source_reports_closed_succeeds_with_zero_rows(sqlite_url: str) -> None:
    resources = {"source": ClosedMarketResource(), "warehouse": WarehouseResource(url=sqlite_url)}
    result = dg.materialize(MARKET[:1], partition_key="2025-08-05", resources=resources)
    assert result.success
    metadata = materializations(result, "daily_bars")[0].metadata
    assert metadata["market_open"].value is False
    assert metadata["rows"].value == 0
    assert "closed" in metadata["note"].value
    assert count(sqlite_url, "SELECT count(*) FROM daily_bar") == 0


def test_lookback_refetches_earlier_days_and_reports_changes(sqlite_url: str) -> None:
    resources = {"source": DemoSourceResource(), "warehouse": WarehouseResource(url=sqlite_url)}
    first = dg.materialize(MARKET[:1], partition_key="2025-08-15", resources=resources)
    assert first.success
    config = dg.RunConfig(ops={"daily_bars": {"config": {"lookback_days": 3}}})
    second = dg.materialize(
        MARKET[:1], partition_key="2025-08-18", resources=resources, run_config=config
    )
    metadata = materializations(second, "daily_bars")[0].metadata
    assert metadata["first_day"].value == "2025-08-13"
    assert metadata["days"].value == 4
    per_day = len(DemoSource().market.bars(dt.date(2025, 8, 15), dt.date(2025, 8, 15)))
    assert metadata["rows_unchanged"].value == per_day  # 08-15 was already there, unchanged


def test_repair_run_fetches_only_the_given_codes(sqlite_url: str) -> None:
    codes = list(DemoSource().market.bars(DEMO_START, DEMO_START)["code"][:3])
    resources = {"source": DemoSourceResource(), "warehouse": WarehouseResource(url=sqlite_url)}
    config = dg.RunConfig(ops={"daily_bars": {"config": {"codes": codes}}})
    result = dg.materialize(
        MARKET[:1], partition_key=DEMO_START.isoformat(), resources=resources, run_config=config
    )
    assert result.success
    with Warehouse(sqlite_url).connect() as connection:
        stored = pd.read_sql("SELECT code FROM daily_bar", connection)
    assert sorted(stored["code"]) == sorted(codes)


@pytest.mark.parametrize("share, succeeds", [(0.5, True), (0.0, False)])
def test_too_many_failed_stocks_fail_the_step_after_writing(
    sqlite_url: str, share: float, succeeds: bool
) -> None:
    from stocksync_dagster.core.sources.base import FetchFailure

    class Flaky(DemoSource):
        def daily_bars(self, start, end, codes=None):  # type: ignore[no-untyped-def]
            result = super().daily_bars(start, end, codes)
            lost = result.frame["code"].iloc[0]
            result.frame = result.frame[result.frame["code"] != lost]
            result.failures.append(FetchFailure(lost, start, end, "SourceError", "injected", 4))
            return result

    class FlakyResource(DemoSourceResource):
        def open(self) -> DemoSource:
            return Flaky()

    resources = {"source": FlakyResource(), "warehouse": WarehouseResource(url=sqlite_url)}
    config = dg.RunConfig(ops={"daily_bars": {"config": {"max_failed_share": share}}})
    result = dg.materialize(
        MARKET[:1],
        partition_key=DEMO_START.isoformat(),
        resources=resources,
        run_config=config,
        raise_on_error=False,
    )
    assert result.success is succeeds
    assert count(sqlite_url, "SELECT count(*) FROM daily_bar") > 0  # good rows are kept either way
    assert count(sqlite_url, "SELECT count(*) FROM sync_failure WHERE status = 'pending'") == 1
