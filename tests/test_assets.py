"""The real asset definitions through Dagster: range runs fetch once, and every partition's
own event tells that day's truth (row count, closed day, failures); schemas and previews."""

import datetime as dt

import dagster as dg
import pandas as pd
import pytest

from stocksync_dagster.core.sources.base import FetchFailure, FetchResult
from stocksync_dagster.core.sources.demo import DemoSource
from stocksync_dagster.core.warehouse import Warehouse
from stocksync_dagster.defs.market.assets import market_data
from stocksync_dagster.defs.market.jobs import range_tags
from stocksync_dagster.defs.reference.assets import stock_basic, trade_calendar
from stocksync_dagster.resources import DemoSourceResource, WarehouseResource
from tests.conftest import DEMO_END, DEMO_START
from tests.support import materializations

STOCKS = 20
WEEK = ["2025-08-04", "2025-08-05", "2025-08-06", "2025-08-07", "2025-08-08"]
CLOSED = dt.date(2025, 8, 6)  # a Wednesday the source's own calendar will call closed
ROW_COUNT = "dagster/row_count"


def resources(url: str, source: DemoSourceResource | None = None) -> dict[str, object]:
    return {
        "source": source or DemoSourceResource(stocks=STOCKS),
        "warehouse": WarehouseResource(url=url),
    }


def count(url: str, sql: str) -> int:
    with Warehouse(url).connect() as connection:
        return connection.exec_driver_sql(sql).scalar_one()


def stored_per_day(url: str, table: str = "daily_bar") -> dict[str, int]:
    with Warehouse(url).connect() as connection:
        frame = pd.read_sql(f"SELECT trade_date, count(*) AS n FROM {table} GROUP BY 1", connection)
    return {str(d)[:10]: int(n) for d, n in zip(frame["trade_date"], frame["n"], strict=True)}


def latest(instance: dg.DagsterInstance, asset: str, partition: str) -> dict[str, object]:
    """Plain values of the metadata of the partition's latest materialization in the instance."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    assert records, f"{asset} {partition} was not materialized"
    materialization = records[0].asset_materialization
    assert materialization is not None and materialization.partition == partition
    return {k: v.value for k, v in materialization.metadata.items()}


def test_range_run_fetches_once_and_each_partition_reports_its_own_day(
    warehouse_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[dt.date, dt.date]] = []
    original = DemoSource.daily_bars

    def counting(self, start, end, codes=None):  # type: ignore[no-untyped-def]
        calls.append((start, end))
        return original(self, start, end, codes)

    monkeypatch.setattr(DemoSource, "daily_bars", counting)
    start, end = DEMO_START.isoformat(), DEMO_END.isoformat()
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [market_data],
            resources=resources(warehouse_url),
            tags=range_tags(start, end),
            instance=instance,
        )
        assert result.success
        keys = sorted(instance.get_materialized_partitions(dg.AssetKey("daily_bars")))
        assert calls == [(DEMO_START, DEMO_END)]
        assert len(keys) == 20 and keys[0] == start and keys[-1] == end
        for asset, table in (("daily_bars", "daily_bar"), ("adj_factor", "adj_factor")):
            stored = stored_per_day(warehouse_url, table)
            assert len(set(stored.values())) > 1  # days differ, so a shared figure would show
            for key in keys:
                metadata = latest(instance, asset, key)
                assert metadata[ROW_COUNT] == stored[key] == metadata["rows_fetched"]
                assert metadata["trade_date"] == key
                assert metadata["market_open"] is True
                assert metadata["failed_stocks"] == 0 and metadata["rejected_rows"] == 0
                assert metadata["run_scope"] == f"run {start}..{end} (20 partitions)"
                assert metadata["run_rows_fetched"] == sum(stored.values())
        assert "days" not in metadata and "rows" not in metadata  # no unlabelled run totals


def test_a_long_range_run_puts_the_preview_and_run_figures_on_its_last_partition(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Longer than MAX_DETAILED_PARTITIONS (3 here instead of 31, on a 5-day week): every
    partition keeps its own day's figures; the preview and the run_* figures are on the last."""
    from stocksync_dagster.defs import metadata as ui_metadata

    monkeypatch.setattr(ui_metadata, "MAX_DETAILED_PARTITIONS", 3)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [market_data],
            resources=resources(sqlite_url),
            tags=range_tags(WEEK[0], WEEK[-1]),
            instance=instance,
        )
        assert result.success
        for asset, table in (("daily_bars", "daily_bar"), ("adj_factor", "adj_factor")):
            stored = stored_per_day(sqlite_url, table)
            by_day = {key: latest(instance, asset, key) for key in WEEK}
            for key, metadata in by_day.items():
                assert metadata[ROW_COUNT] == stored[key] == metadata["rows_fetched"]
                assert metadata["trade_date"] == key and metadata["market_open"] is True
                assert metadata["failed_stocks"] == 0 and metadata["rejected_rows"] == 0
            *earlier, last = WEEK
            scope = f"run {WEEK[0]}..{last} (5 partitions)"
            assert by_day[last]["run_scope"] == scope
            assert by_day[last]["run_rows_fetched"] == sum(stored[k] for k in WEEK)
            assert by_day[last]["run_failed_stocks"] == 0
            assert isinstance(by_day[last]["preview"], dg.TableMetadataValue)
            for key in earlier:
                assert by_day[key]["run_scope"].startswith(scope)
                assert f"on partition {last}" in by_day[key]["run_scope"]
                assert "preview" not in by_day[key]
                assert not [k for k in by_day[key] if k.startswith("run_") and k != "run_scope"]


class ClosedWednesday(DemoSource):
    """The demo market, except that the source calls one weekday closed (no rows that day)."""

    def trade_calendar(self, start, end):  # type: ignore[no-untyped-def]
        frame = super().trade_calendar(start, end)
        frame.loc[frame["cal_date"] == CLOSED, "is_open"] = False
        return frame

    def _without_closed_day(self, result: FetchResult) -> FetchResult:
        result.frame = result.frame[result.frame["trade_date"] != CLOSED]
        return result

    def daily_bars(self, start, end, codes=None):  # type: ignore[no-untyped-def]
        return self._without_closed_day(super().daily_bars(start, end, codes))

    def adj_factors(self, start, end, codes=None):  # type: ignore[no-untyped-def]
        return self._without_closed_day(super().adj_factors(start, end, codes))


class ClosedWednesdayResource(DemoSourceResource):
    def make_source(self) -> DemoSource:
        return ClosedWednesday(n_stocks=self.stocks, seed=self.seed)


def test_a_closed_day_inside_a_range_run_says_so_on_its_own_partition(sqlite_url: str) -> None:
    source = ClosedWednesdayResource(stocks=STOCKS)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [market_data],
            selection=["daily_bars"],
            resources=resources(sqlite_url, source),
            tags=range_tags(WEEK[0], WEEK[-1]),
            instance=instance,
        )
        assert result.success
        closed = latest(instance, "daily_bars", CLOSED.isoformat())
        assert closed["market_open"] is False and closed[ROW_COUNT] == 0
        assert "closed" in str(closed["note"])
        assert closed["run_open_days"] == 4
        stored = stored_per_day(sqlite_url)
        assert CLOSED.isoformat() not in stored and len(stored) == 4
        for key in stored:
            metadata = latest(instance, "daily_bars", key)
            assert metadata["market_open"] is True and metadata[ROW_COUNT] == stored[key] > 0
            assert "note" not in metadata


def test_a_failed_stock_and_a_rejected_row_show_on_their_own_day_only(sqlite_url: str) -> None:
    failed_day, bad_day = dt.date(2025, 8, 7), dt.date(2025, 8, 5)

    class LosesOneStockOneDay(DemoSource):
        def daily_bars(self, start, end, codes=None):  # type: ignore[no-untyped-def]
            result = super().daily_bars(start, end, codes)
            frame = result.frame.reset_index(drop=True)
            day = frame[frame["trade_date"] == failed_day]
            lost = day["code"].iloc[0]
            frame.loc[frame.index[frame["trade_date"] == bad_day][0], "low"] = -1.0
            result.frame = frame.drop(day.index[:1])
            result.failures.append(FetchFailure(lost, failed_day, failed_day, "SourceError", "x"))
            return result

    class Resource(DemoSourceResource):
        def make_source(self) -> DemoSource:
            return LosesOneStockOneDay(n_stocks=self.stocks, seed=self.seed)

    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [market_data],
            selection=["daily_bars"],
            resources=resources(sqlite_url, Resource(stocks=STOCKS)),
            tags=range_tags(WEEK[0], WEEK[-1]),
            run_config=dg.RunConfig(ops={"market_data": {"config": {"max_failed_share": 0.5}}}),
            instance=instance,
        )
        assert result.success
        by_day = {key: latest(instance, "daily_bars", key) for key in WEEK}
    assert {k: m["failed_stocks"] for k, m in by_day.items()} == {
        k: int(k == failed_day.isoformat()) for k in WEEK
    }
    assert {k: m["rejected_rows"] for k, m in by_day.items()} == {
        k: int(k == bad_day.isoformat()) for k in WEEK
    }
    assert by_day[failed_day.isoformat()]["failed_codes"]
    assert "low" in str(by_day[bad_day.isoformat()]["rejected_reasons"])
    assert by_day[WEEK[0]]["run_failed_stocks"] == 1 and by_day[WEEK[0]]["run_rejected_rows"] == 1


def test_a_repair_of_two_codes_keeps_the_days_full_row_count(sqlite_url: str) -> None:
    day = WEEK[1]
    with dg.instance_for_test() as instance:
        first = dg.materialize(
            [market_data],
            selection=["daily_bars"],
            resources=resources(sqlite_url),
            partition_key=day,
            instance=instance,
        )
        assert first.success
        full = stored_per_day(sqlite_url)[day]
        codes = sorted(
            DemoSource(n_stocks=STOCKS).market.bars(*[dt.date.fromisoformat(day)] * 2)["code"]
        )[:2]
        repair = dg.materialize(
            [market_data],
            selection=["daily_bars"],
            resources=resources(sqlite_url),
            partition_key=day,
            run_config=dg.RunConfig(ops={"market_data": {"config": {"codes": codes}}}),
            instance=instance,
        )
        assert repair.success
        metadata = latest(instance, "daily_bars", day)
    assert full > 2
    assert metadata[ROW_COUNT] == full == stored_per_day(sqlite_url)[day]
    assert metadata["rows_repaired"] == 2
    assert metadata["repaired_codes"] == ", ".join(codes)
    assert metadata["run_rows_unchanged"] == 2


def test_reference_assets_fill_calendar_and_master(sqlite_url: str) -> None:
    result = dg.materialize([trade_calendar, stock_basic], resources=resources(sqlite_url))
    assert result.success
    assert count(sqlite_url, "SELECT count(*) FROM stock_basic") == STOCKS
    closed = "SELECT count(*) FROM trade_calendar WHERE cal_date = '2025-10-01' AND is_open"
    assert count(sqlite_url, closed) == 0
    opened = "SELECT count(*) FROM trade_calendar WHERE cal_date = '2025-10-09' AND is_open"
    assert count(sqlite_url, opened) == 1
    calendar = result.asset_materializations_for_node("trade_calendar")[0].metadata
    assert calendar[ROW_COUNT].value == count(sqlite_url, "SELECT count(*) FROM trade_calendar")
    master = result.asset_materializations_for_node("stock_basic")[0].metadata
    assert master[ROW_COUNT].value == STOCKS


@pytest.mark.parametrize(
    "asset, columns",
    [
        ("trade_calendar", {"cal_date": "date", "is_open": "boolean"}),
        ("stock_basic", {"code": "varchar(12)", "list_date": "date"}),
        ("daily_bars", {"trade_date": "date", "volume": "bigint", "amount": "double"}),
        ("adj_factor", {"code": "varchar(12)", "adj_factor": "double"}),
    ],
)
def test_every_table_asset_carries_its_column_schema(asset: str, columns: dict[str, str]) -> None:
    key = dg.AssetKey(asset)
    definition = next(d for d in (trade_calendar, stock_basic, market_data) if key in d.keys)
    schema = definition.specs_by_key[key].metadata["dagster/column_schema"]
    assert isinstance(schema, dg.TableSchema)
    types = {c.name: c.type for c in schema.columns}
    assert columns.items() <= types.items()
    described = {c.name: c.description for c in schema.columns}
    if asset == "daily_bars":
        assert described["volume"] == "shares" and described["amount"] == "CNY"


def test_previews_are_tables_with_plain_numbers_and_iso_dates(sqlite_url: str) -> None:
    result = dg.materialize(
        [stock_basic, market_data],
        selection=["stock_basic", "daily_bars"],
        resources=resources(sqlite_url),
        partition_key=WEEK[0],
    )
    assert result.success
    bars = materializations(result, "daily_bars")[0].metadata["preview"]
    assert isinstance(bars, dg.TableMetadataValue)
    first = bars.records[0].data
    assert first["trade_date"] == WEEK[0]
    assert isinstance(first["volume"], int) and isinstance(first["amount"], float)
    assert {c.name for c in bars.schema.columns} >= {"code", "close", "volume", "amount"}
    master = result.asset_materializations_for_node("stock_basic")[0].metadata["preview"]
    assert isinstance(master, dg.TableMetadataValue)
    assert all(isinstance(r.data["list_date"], str | None) for r in master.records)


def test_lookback_refetches_earlier_days_and_reports_them_as_run_figures(
    sqlite_url: str,
) -> None:
    res = resources(sqlite_url)
    assert dg.materialize(
        [market_data], selection=["daily_bars"], partition_key="2025-08-15", resources=res
    ).success
    config = dg.RunConfig(ops={"market_data": {"config": {"lookback_days": 3}}})
    second = dg.materialize(
        [market_data],
        selection=["daily_bars"],
        partition_key="2025-08-18",
        resources=res,
        run_config=config,
    )
    [event] = materializations(second, "daily_bars")
    metadata = {k: v.value for k, v in event.metadata.items()}
    assert event.partition == "2025-08-18" and metadata["trade_date"] == "2025-08-18"
    assert metadata[ROW_COUNT] == stored_per_day(sqlite_url)["2025-08-18"]
    assert metadata["run_first_day"] == "2025-08-13" and metadata["run_open_days"] == 4
    assert "re-fetched from 2025-08-13" in metadata["run_scope"]
    per_day = len(
        DemoSource(n_stocks=STOCKS).market.bars(dt.date(2025, 8, 15), dt.date(2025, 8, 15))
    )
    assert metadata["run_rows_unchanged"] == per_day  # 08-15 was already there, unchanged


@pytest.mark.parametrize("share, succeeds", [(0.5, True), (0.0, False)])
def test_too_many_failed_stocks_fail_the_step_after_writing(
    sqlite_url: str, share: float, succeeds: bool
) -> None:
    class Flaky(DemoSource):
        def daily_bars(self, start, end, codes=None):  # type: ignore[no-untyped-def]
            result = super().daily_bars(start, end, codes)
            lost = result.frame["code"].iloc[0]
            result.frame = result.frame[result.frame["code"] != lost]
            result.failures.append(FetchFailure(lost, start, end, "SourceError", "injected", 4))
            return result

    class FlakyResource(DemoSourceResource):
        def make_source(self) -> DemoSource:
            return Flaky(n_stocks=self.stocks, seed=self.seed)

    config = dg.RunConfig(ops={"market_data": {"config": {"max_failed_share": share}}})
    result = dg.materialize(
        [market_data],
        selection=["daily_bars"],
        partition_key=WEEK[0],
        resources=resources(sqlite_url, FlakyResource(stocks=STOCKS)),
        run_config=config,
        raise_on_error=False,
    )
    assert result.success is succeeds
    assert count(sqlite_url, "SELECT count(*) FROM daily_bar") > 0  # good rows are kept either way
    still_open = "SELECT count(*) FROM sync_failure WHERE status IN ('pending', 'retrying')"
    assert count(sqlite_url, still_open) == 1  # one stock, one day, whatever the step retries
