"""Gap automation and repair sensors against a real instance and warehouse: exact requests."""

import datetime as dt
from typing import Any

import dagster as dg
import pytest

from stocksync_dagster.core.sources.base import FetchFailure
from stocksync_dagster.core.sources.demo import DemoSource
from stocksync_dagster.core.warehouse import Warehouse, failures
from stocksync_dagster.defs.market.jobs import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    TRIGGER_TAG,
    range_tags,
)
from stocksync_dagster.defs.market.partitions import trading_days
from stocksync_dagster.defs.market.repair import MAX_ATTEMPTS
from stocksync_dagster.resources import WarehouseResource
from tests.orchestration import (
    DEMO_STOCKS,
    DownSourceResource,
    build_defs,
    materialize_range,
    recent_trading_days,
)

DAYS = [d.isoformat() for d in recent_trading_days(12)]
BOTH = ("daily_bars", "adj_factor")
KEYS = trading_days.get_partition_keys()  # STOCKSYNC_START_DATE .. the last settled day
HISTORY, NEWEST = KEYS[:-1], KEYS[-1]  # the newest day is the schedules' (test_schedules.py)
# A moment inside an hour, so "later in the hour" and "after the next hour" are unambiguous.
NOW = dt.datetime.now(dt.UTC).replace(minute=10, second=0, microsecond=0)


@pytest.fixture
def defs(sqlite_url: str) -> dg.Definitions:
    return build_defs(sqlite_url)


def evaluate(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    cursor: str | None = None,
    resources: dict | None = None,
):  # -> SensorExecutionData
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    return sensor.evaluate_tick(context)


def requested(data) -> list[tuple[tuple[str, ...], str, str]]:  # type: ignore[no-untyped-def]
    return [
        (
            tuple(k.to_user_string() for k in r.asset_selection),
            r.tags[RANGE_START_TAG],
            r.tags[RANGE_END_TAG],
        )
        for r in data.run_requests
    ]


def add_unfinished_run(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    start: str,
    end: str,
    tags: dict | None = None,
    assets: tuple[str, ...] = BOTH,
) -> None:
    """A market_sync range run created but not started (e.g. queued from the UI)."""
    instance.create_run_for_job(
        defs.resolve_job_def("market_sync"),
        status=dg.DagsterRunStatus.NOT_STARTED,
        asset_selection={dg.AssetKey(a) for a in assets},
        tags={**range_tags(start, end), **(tags or {})},
    )


def mark_materialized(
    instance: dg.DagsterInstance, keys: list[str], assets: tuple[str, ...] = BOTH
) -> None:
    """Record materializations without running anything (as if an earlier sync did)."""
    for key in keys:
        for asset in assets:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=key))


def gap_requests(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    at: dt.datetime = NOW,
    cursor: Any = None,
) -> tuple[dict[str, list[str]], Any]:
    """Requested partitions per asset (reference assets only when requested), and the result."""
    result = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, evaluation_time=at, cursor=cursor
    )
    names = ("trade_calendar", "stock_basic", *BOTH)
    by_asset = {a: sorted(result.get_requested_partitions(dg.AssetKey(a))) for a in names}
    return {a: keys for a, keys in by_asset.items() if keys or a in BOTH}, result


def test_sensor_defaults_and_descriptions(defs: dg.Definitions) -> None:
    status = {s.name: s.default_status for s in defs.sensors or []}
    assert status == {
        "gap_automation_sensor": dg.DefaultSensorStatus.STOPPED,
        "repair_sensor": dg.DefaultSensorStatus.RUNNING,
        "failure_alert_sensor": dg.DefaultSensorStatus.RUNNING,
        "health_alert_sensor": dg.DefaultSensorStatus.RUNNING,
    }
    for instigator in [*(defs.sensors or []), *(defs.schedules or [])]:
        assert instigator.description and len(instigator.description) > 40, instigator.name
    gap = defs.resolve_sensor_def("gap_automation_sensor")
    assert isinstance(gap, dg.AutomationConditionSensorDefinition)
    assert gap.emit_backfills
    assert gap.asset_selection.resolve(defs.resolve_asset_graph()) == {dg.AssetKey(a) for a in BOTH}
    # The explicit sensor covers every automated asset: Dagster adds no implicit one.
    assert "default_automation_condition_sensor" not in {
        s.name for s in defs.get_repository_def().sensor_defs
    }


def test_gap_automation_requests_all_missing_history_but_no_reference_asset_or_newest_day(
    defs: dg.Definitions,
) -> None:
    with dg.DagsterInstance.ephemeral() as instance:
        got, _ = gap_requests(defs, instance)
    assert got == {"daily_bars": HISTORY, "adj_factor": HISTORY}  # from the first evaluation


def test_gap_automation_requests_missing_and_failed_but_not_materialized_or_in_flight(
    defs: dg.Definitions,
) -> None:
    a, b, c, d, e = HISTORY[-5:]
    with dg.DagsterInstance.ephemeral() as instance:
        mark_materialized(instance, HISTORY[:-5])
        assert materialize_range(defs, instance, a, a).success
        mark_materialized(instance, [b])
        # b was materialized; its last run (daily_bars only) failed: requested again.
        failed = materialize_range(defs, instance, b, b, ("daily_bars",), DownSourceResource())
        assert not failed.success
        add_unfinished_run(defs, instance, c, d, assets=("adj_factor",))
        got, _ = gap_requests(defs, instance)
    assert got == {"daily_bars": [b, c, d, e], "adj_factor": [e]}


def test_gap_automation_requests_once_then_retries_the_next_hour(defs: dg.Definitions) -> None:
    last = HISTORY[-1]
    with dg.DagsterInstance.ephemeral() as instance:
        mark_materialized(instance, [*HISTORY[:-1], NEWEST])
        first, result = gap_requests(defs, instance)
        assert first == {"daily_bars": [last], "adj_factor": [last]}
        # Later in the same hour (its backfill not seen yet): not requested a second time.
        again, result = gap_requests(defs, instance, NOW + dt.timedelta(minutes=30), result.cursor)
        assert again == {"daily_bars": [], "adj_factor": []}
        # The run failed; from the next hour on it is requested again.
        failed = materialize_range(defs, instance, last, last, source=DownSourceResource())
        assert not failed.success
        later, result = gap_requests(defs, instance, NOW + dt.timedelta(minutes=55), result.cursor)
        assert later == {"daily_bars": [last], "adj_factor": [last]}
        # Materialized: nothing left to request, whatever the hour.
        assert materialize_range(defs, instance, last, last).success
        done, _ = gap_requests(defs, instance, NOW + dt.timedelta(hours=3), result.cursor)
    assert done == {"daily_bars": [], "adj_factor": []}


def record(url: str, asset: str, code: str | None, days: list[str], max_retries: int = 5) -> None:
    open_days = [dt.date.fromisoformat(x) for x in days]
    failure = FetchFailure(code, open_days[0], open_days[-1], "SourceError", "timeout")
    with Warehouse(url).begin() as connection:
        failures.record_failures(connection, asset, [failure], open_days, max_retries)


def statuses(url: str) -> dict[tuple[str, str, str], tuple[str, int]]:
    with Warehouse(url).connect() as connection:
        frame = failures.open_failures(
            connection, statuses=("pending", "retrying", "resolved", "abandoned")
        )
    return {
        (r.asset, str(r.trade_date), r.code): (r.status, r.retry_count) for r in frame.itertuples()
    }


def test_repair_sensor_refetches_only_failed_stocks_and_gives_up_after_the_limit(
    defs: dg.Definitions, sqlite_url: str
) -> None:
    d = DAYS
    a, b, c = DemoSource(n_stocks=DEMO_STOCKS).stock_basic()["code"][:3]
    record(sqlite_url, "daily_bars", a, [d[1], d[2]])
    record(sqlite_url, "daily_bars", b, [d[2]])
    record(sqlite_url, "daily_bars", c, [d[6]])
    record(sqlite_url, "adj_factor", None, [d[4]])  # a whole day
    sensor = defs.resolve_sensor_def("repair_sensor")
    resources = {"warehouse": WarehouseResource(url=sqlite_url)}
    with dg.DagsterInstance.ephemeral() as instance:
        data = evaluate(sensor, instance, resources=resources)
        assert requested(data) == [
            (("adj_factor",), d[4], d[4]),
            (("daily_bars",), d[1], d[2]),
            (("daily_bars",), d[6], d[6]),
        ]
        configs = [r.run_config["ops"] for r in data.run_requests]
        assert configs[0] == {
            "market_data": {"config": {"codes": None, "max_retries": MAX_ATTEMPTS}}
        }
        assert configs[1] == {
            "market_data": {"config": {"codes": sorted([a, b]), "max_retries": MAX_ATTEMPTS}}
        }
        assert configs[2]["market_data"]["config"]["codes"] == [c]
        assert data.run_requests[1].tags["stocksync/repair_stocks"] == "2 stocks"

        # Run the a/b repair for real with the demo source: those rows are resolved.
        run_config = {"ops": configs[1]}
        assert materialize_range(
            defs, instance, d[1], d[2], ("daily_bars",), run_config=run_config
        ).success
        assert statuses(sqlite_url)[("daily_bars", d[1], a)] == ("resolved", 0)
        assert statuses(sqlite_url)[("daily_bars", d[6], c)] == ("pending", 0)

        # c keeps failing: each attempt counts (new run key), the third abandons it.
        keys = {r.run_key for r in data.run_requests}
        for attempt in range(1, MAX_ATTEMPTS):
            record(sqlite_url, "daily_bars", c, [d[6]], max_retries=MAX_ATTEMPTS)
            again = evaluate(sensor, instance, resources=resources)
            [repair_c] = [r for r in again.run_requests if r.tags[RANGE_START_TAG] == d[6]]
            assert repair_c.run_key not in keys
            keys.add(repair_c.run_key)
            assert statuses(sqlite_url)[("daily_bars", d[6], c)] == ("retrying", attempt)
        record(sqlite_url, "daily_bars", c, [d[6]], max_retries=MAX_ATTEMPTS)
        assert statuses(sqlite_url)[("daily_bars", d[6], c)] == ("abandoned", MAX_ATTEMPTS)
        last = evaluate(sensor, instance, resources=resources)
        assert requested(last) == [(("adj_factor",), d[4], d[4])]

        # While a repair of adj_factor is running, it is not requested again.
        add_unfinished_run(
            defs,
            instance,
            d[4],
            d[4],
            {TRIGGER_TAG: "repair-sensor", "stocksync/repair_asset": "adj_factor"},
        )
        idle = evaluate(sensor, instance, resources=resources)
        assert idle.run_requests == []
        assert idle.skip_message == "1 open failures, repairs already running"
