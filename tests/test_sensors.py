"""Gap and repair sensors against a real instance and warehouse: exact requests, bounds, cursor."""

import datetime as dt

import dagster as dg
import pytest
from dagster._core.definitions.sensor_definition import SensorExecutionData
from dagster._core.utils import make_new_run_id

from stocksync_dagster.core.settings import Settings
from stocksync_dagster.core.sources.base import FetchFailure
from stocksync_dagster.core.sources.demo import DemoSource
from stocksync_dagster.core.warehouse import Warehouse, failures
from stocksync_dagster.defs.market.gaps import GapCursor, build_gap_sensor
from stocksync_dagster.defs.market.jobs import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    TRIGGER_TAG,
    build_jobs,
)
from stocksync_dagster.defs.market.partitions import trading_day_partitions
from stocksync_dagster.defs.market.repair import build_repair_sensor
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


@pytest.fixture
def settings(sqlite_url: str) -> Settings:
    return Settings(
        source="demo", database_url=sqlite_url, start_date=dt.date.fromisoformat(DAYS[0])
    )


@pytest.fixture
def defs(settings: Settings) -> dg.Definitions:
    return build_defs(settings)


def gap_sensor(settings: Settings, **bounds: float) -> dg.SensorDefinition:
    _, market = build_jobs("demo")
    return build_gap_sensor(market, trading_day_partitions(settings.start_date), **bounds)  # type: ignore[arg-type]


def evaluate(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    cursor: str | None = None,
    resources: dict | None = None,
) -> SensorExecutionData:
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
    instance: dg.DagsterInstance, start: str, end: str, tags: dict | None = None
) -> None:
    instance.add_run(
        dg.DagsterRun(
            job_name="market_sync",
            run_id=make_new_run_id(),
            status=dg.DagsterRunStatus.NOT_STARTED,
            asset_selection=frozenset(dg.AssetKey(a) for a in BOTH),
            tags={RANGE_START_TAG: start, RANGE_END_TAG: end, **(tags or {})},
        )
    )


def test_sensor_defaults_gap_stopped_repair_and_alerts_running(defs: dg.Definitions) -> None:
    status = {s.name: s.default_status for s in defs.sensors}  # type: ignore[union-attr]
    assert status == {
        "gap_sensor": dg.DefaultSensorStatus.STOPPED,
        "repair_sensor": dg.DefaultSensorStatus.RUNNING,
        "failure_alert_sensor": dg.DefaultSensorStatus.RUNNING,
    }


def test_gap_sensor_requests_bounded_ranges_newest_first_and_respects_cursor_and_runs(
    defs: dg.Definitions, settings: Settings
) -> None:
    d = DAYS
    sensor = gap_sensor(
        settings, max_ranges_per_tick=2, max_partitions_per_range=2, max_runs_in_flight=10
    )
    with dg.instance_for_test() as instance:
        assert materialize_range(defs, instance, d[3], d[5]).success
        assert materialize_range(defs, instance, d[8], d[8], ("adj_factor",)).success
        failed = materialize_range(
            defs, instance, d[8], d[8], ("daily_bars",), DownSourceResource()
        )
        assert not failed.success
        # Missing: 0-2, 6-7, 9-11 (both assets); failed: daily_bars on 8.

        first = evaluate(sensor, instance)
        assert requested(first) == [(BOTH, d[11], d[11]), (BOTH, d[9], d[10])]
        assert all(r.tags[TRIGGER_TAG] == "gap-sensor" for r in first.run_requests)
        assert len({r.run_key for r in first.run_requests}) == 2

        second = evaluate(sensor, instance, first.cursor)  # runs not started yet: cursor holds them
        assert requested(second) == [(("daily_bars",), d[8], d[8]), (BOTH, d[6], d[7])]

        add_unfinished_run(instance, d[0], d[2])  # e.g. launched from the UI, still queued
        third = evaluate(sensor, instance, second.cursor)
        assert third.run_requests == []
        assert "all running or requested recently" in (third.skip_message or "")
        assert GapCursor.parse(third.cursor).tick == 3

        # Once the cool-down has passed, unfinished work is requested again (none is running).
        forgetful = gap_sensor(
            settings,
            max_ranges_per_tick=2,
            max_partitions_per_range=2,
            max_runs_in_flight=10,
            cooldown_seconds=0,
        )
        assert requested(evaluate(forgetful, instance, second.cursor)) == requested(first)

        # A requested range really runs as one range run and fills its partitions.
        assert materialize_range(defs, instance, d[9], d[11]).success
        assert materialize_range(defs, instance, d[0], d[8]).success
        done = evaluate(forgetful, instance)
        assert done.run_requests == []
        assert (
            done.skip_message
            == f"no missing or failed partitions in daily_bars, adj_factor {d[0]}..{d[11]}"
        )


def test_gap_sensor_waits_while_its_own_runs_are_in_flight(settings: Settings) -> None:
    sensor = gap_sensor(settings, max_runs_in_flight=1)
    with dg.instance_for_test() as instance:
        assert requested(evaluate(sensor, instance)) == [(BOTH, DAYS[0], DAYS[11])]
        add_unfinished_run(instance, DAYS[0], DAYS[11], {TRIGGER_TAG: "gap-sensor"})
        data = evaluate(sensor, instance)
    assert data.run_requests == []
    assert data.skip_message == "24 partitions to fill; waiting for 1 gap run(s) to finish"


def test_gap_sensor_splits_long_gaps(settings: Settings) -> None:
    sensor = gap_sensor(settings, max_ranges_per_tick=5, max_partitions_per_range=5)
    with dg.instance_for_test() as instance:
        assert requested(evaluate(sensor, instance)) == [
            (BOTH, DAYS[10], DAYS[11]),
            (BOTH, DAYS[5], DAYS[9]),
        ]  # max_runs_in_flight (2) bounds the tick too


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
    _, market = build_jobs("demo")
    sensor = build_repair_sensor(market, max_attempts=3)
    resources = {"warehouse": WarehouseResource(url=sqlite_url)}
    with dg.instance_for_test() as instance:
        data = evaluate(sensor, instance, resources=resources)
        assert requested(data) == [
            (("adj_factor",), d[4], d[4]),
            (("daily_bars",), d[1], d[2]),
            (("daily_bars",), d[6], d[6]),
        ]
        configs = [r.run_config["ops"] for r in data.run_requests]
        assert configs[0] == {"adj_factor": {"config": {"codes": None, "max_retries": 3}}}
        assert configs[1] == {"daily_bars": {"config": {"codes": sorted([a, b]), "max_retries": 3}}}
        assert configs[2]["daily_bars"]["config"]["codes"] == [c]
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
        for attempt in (1, 2):
            record(sqlite_url, "daily_bars", c, [d[6]], max_retries=3)
            again = evaluate(sensor, instance, resources=resources)
            [repair_c] = [r for r in again.run_requests if r.tags[RANGE_START_TAG] == d[6]]
            assert repair_c.run_key not in keys
            keys.add(repair_c.run_key)
            assert statuses(sqlite_url)[("daily_bars", d[6], c)] == ("retrying", attempt)
        record(sqlite_url, "daily_bars", c, [d[6]], max_retries=3)
        assert statuses(sqlite_url)[("daily_bars", d[6], c)] == ("abandoned", 3)
        last = evaluate(sensor, instance, resources=resources)
        assert requested(last) == [(("adj_factor",), d[4], d[4])]

        # While a repair of adj_factor is running, it is not requested again.
        add_unfinished_run(
            instance,
            d[4],
            d[4],
            {TRIGGER_TAG: "repair-sensor", "stocksync/repair_asset": "adj_factor"},
        )
        idle = evaluate(sensor, instance, resources=resources)
        assert idle.run_requests == []
        assert idle.skip_message == "1 open failures, repairs already running"
