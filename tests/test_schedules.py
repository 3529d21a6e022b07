"""The nightly and catch-up schedules evaluated at chosen times against a real instance."""

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from stocksync_dagster.core.trading_calendar import SHANGHAI
from tests.orchestration import DownSourceResource, build_defs, materialize_range

FRIDAY = dt.date(2026, 11, 20)  # a trading day
MONDAY_MORNING = dt.datetime(2026, 11, 23, 8, 0, tzinfo=SHANGHAI)


@pytest.fixture
def defs(sqlite_url: str) -> dg.Definitions:
    return build_defs(sqlite_url)


def tick(
    defs: dg.Definitions, name: str, instance: dg.DagsterInstance, at: dt.datetime
):  # -> ScheduleExecutionData
    schedule = defs.resolve_schedule_def(name)
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=at, repository_def=defs.get_repository_def()
    )
    return schedule.evaluate_tick(context)


def nightly_at(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(18, 30), tzinfo=SHANGHAI)


def test_schedules_run_on_weekdays_in_shanghai_time(defs: dg.Definitions) -> None:
    nightly = defs.resolve_schedule_def("nightly_sync_schedule")
    catch_up = defs.resolve_schedule_def("morning_catch_up_schedule")
    assert (nightly.cron_schedule, nightly.execution_timezone) == ("30 18 * * 1-5", "Asia/Shanghai")
    assert catch_up.cron_schedule == "0 8 * * *"
    assert nightly.job_name == "nightly_sync"


def test_nightly_requests_the_trading_day_with_lookback(defs: dg.Definitions) -> None:
    with dg.instance_for_test() as instance:
        data = tick(defs, "nightly_sync_schedule", instance, nightly_at(FRIDAY))
    [request] = data.run_requests
    assert request.partition_key == "2026-11-20"
    assert request.run_key == "nightly:2026-11-20"
    assert request.tags["stocksync/trigger"] == "nightly"
    # one step computes both assets: one config
    assert request.run_config["ops"] == {"market_data": {"config": {"lookback_days": 5}}}


@pytest.mark.parametrize(
    ("day", "reason"),
    [
        (dt.date(2026, 11, 21), "2026-11-21 (Saturday) is not a trading day"),
        (dt.date(2026, 10, 1), "2026-10-01 (Thursday) is not a trading day"),  # National Day
    ],
)
def test_nightly_skips_non_trading_days(defs: dg.Definitions, day: dt.date, reason: str) -> None:
    with dg.instance_for_test() as instance:
        data = tick(defs, "nightly_sync_schedule", instance, nightly_at(day))
    assert not data.run_requests
    assert data.skip_message == reason


def test_nightly_skips_a_day_already_materialized(defs: dg.Definitions) -> None:
    with dg.instance_for_test() as instance:
        assert materialize_range(defs, instance, "2026-11-20", "2026-11-20").success
        data = tick(defs, "nightly_sync_schedule", instance, nightly_at(FRIDAY))
        assert not data.run_requests
        assert data.skip_message == "2026-11-20 is already materialized (daily_bars, adj_factor)"
        # Another day is still requested.
        assert tick(
            defs, "nightly_sync_schedule", instance, nightly_at(dt.date(2026, 11, 19))
        ).run_requests


def ranges(requests: list[dg.RunRequest]) -> list[tuple[str, str]]:
    return [
        (r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"])
        for r in requests
    ]


def test_catch_up_requests_every_missing_or_failed_day_of_the_window_as_ranges(
    defs: dg.Definitions,
) -> None:
    with dg.instance_for_test() as instance:
        # nothing synced: the last 10 trading days, one range run
        [request] = tick(defs, "morning_catch_up_schedule", instance, MONDAY_MORNING).run_requests
        assert ranges([request]) == [("2026-11-09", "2026-11-20")]
        assert request.tags["stocksync/trigger"] == "catch-up"
        assert request.partition_key is None
        assert {k.to_user_string() for k in request.asset_selection or []} == {
            "daily_bars",
            "adj_factor",
        }

        for first, last in [("2026-11-09", "2026-11-12"), ("2026-11-16", "2026-11-17")]:
            assert materialize_range(defs, instance, first, last).success
        assert materialize_range(defs, instance, "2026-11-19", "2026-11-20").success
        failed = materialize_range(
            defs, instance, "2026-11-13", "2026-11-13", source=DownSourceResource()
        )
        assert not failed.success
        data = tick(defs, "morning_catch_up_schedule", instance, MONDAY_MORNING)
        # 11-13 failed, 11-18 never ran: exactly those, not the materialized days
        assert ranges(data.run_requests) == [
            ("2026-11-13", "2026-11-13"),
            ("2026-11-18", "2026-11-18"),
        ]
        assert len({r.run_key for r in data.run_requests}) == 2

        assert materialize_range(defs, instance, "2026-11-13", "2026-11-13").success
        assert materialize_range(defs, instance, "2026-11-18", "2026-11-18").success
        done = tick(defs, "morning_catch_up_schedule", instance, MONDAY_MORNING)
        assert not done.run_requests
        assert done.skip_message.startswith(
            "last 10 trading days (2026-11-09..2026-11-20): nothing to catch up; "
            "2026-11-09 is already materialized"
        )


def test_catch_up_window_comes_from_the_environment(sqlite_url: str) -> None:
    env = {**os.environ, "STOCKSYNC_CATCHUP_DAYS": "3", "STOCKSYNC_DATABASE_URL": sqlite_url}
    probe = CATCH_UP_PROBE
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [["2026-11-18", "2026-11-20"]]


CATCH_UP_PROBE = """
import datetime as dt, json
import dagster as dg
from stocksync_dagster.core.trading_calendar import SHANGHAI
from stocksync_dagster.definitions import defs

catch_up = defs.resolve_schedule_def("morning_catch_up_schedule")
at = dt.datetime(2026, 11, 23, 8, 0, tzinfo=SHANGHAI)
with dg.instance_for_test() as instance:
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=at, repository_def=defs.get_repository_def()
    )
    requests = catch_up.evaluate_tick(context).run_requests
print(json.dumps([[r.tags["dagster/asset_partition_range_start"],
                   r.tags["dagster/asset_partition_range_end"]] for r in requests]))
"""


def test_evening_retry_requests_the_day_only_while_missing_or_failed(
    defs: dg.Definitions,
) -> None:
    retry = defs.resolve_schedule_def("evening_retry_schedule")
    assert retry.cron_schedule == "0 22 * * 1-5"
    at = dt.datetime.combine(FRIDAY, dt.time(22, 0), tzinfo=SHANGHAI)
    with dg.instance_for_test() as instance:
        [request] = tick(defs, "evening_retry_schedule", instance, at).run_requests
        assert request.partition_key == "2026-11-20"
        assert request.tags["stocksync/trigger"] == "evening-retry"
        assert request.run_key == "evening-retry:2026-11-20"

        failed = materialize_range(
            defs, instance, "2026-11-20", "2026-11-20", source=DownSourceResource()
        )
        assert not failed.success
        [request] = tick(defs, "evening_retry_schedule", instance, at).run_requests
        assert request.partition_key == "2026-11-20"

        assert materialize_range(defs, instance, "2026-11-20", "2026-11-20").success
        data = tick(defs, "evening_retry_schedule", instance, at)
        assert not data.run_requests
        assert data.skip_message == "2026-11-20 is already materialized (daily_bars, adj_factor)"
        holiday = dt.datetime(2026, 10, 1, 22, 0, tzinfo=SHANGHAI)
        skipped = tick(defs, "evening_retry_schedule", instance, holiday)
        assert skipped.skip_message == "2026-10-01 (Thursday) is not a trading day"


PROBE = """
import datetime as dt, json
import dagster as dg
from stocksync_dagster.core.trading_calendar import SHANGHAI
from stocksync_dagster.definitions import defs

nightly = defs.resolve_schedule_def("nightly_sync_schedule")
catch_up = defs.resolve_schedule_def("morning_catch_up_schedule")
at = dt.datetime(2026, 11, 20, 19, 5, tzinfo=SHANGHAI)
with dg.instance_for_test() as instance:
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=at, repository_def=defs.get_repository_def()
    )
    [request] = nightly.evaluate_tick(context).run_requests
retry = defs.resolve_schedule_def("evening_retry_schedule").cron_schedule
print(json.dumps([nightly.cron_schedule, catch_up.cron_schedule, request.run_config, retry]))
"""


def test_schedule_times_and_lookback_come_from_the_environment(sqlite_url: str) -> None:
    # The cron strings are fixed when the definitions load: load them in a fresh process.
    env = {
        **os.environ,
        "STOCKSYNC_NIGHTLY_AT": "19:05",
        "STOCKSYNC_CATCHUP_AT": "07:45",
        "STOCKSYNC_LOOKBACK_DAYS": "2",
        "STOCKSYNC_RETRY_AT": "23:10",
        "STOCKSYNC_DATABASE_URL": sqlite_url,
    }
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, cwd=root, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    nightly, catch_up, run_config, retry = json.loads(out.stdout.strip().splitlines()[-1])
    assert (nightly, catch_up, retry) == ("5 19 * * 1-5", "45 7 * * *", "10 23 * * 1-5")
    assert run_config["ops"]["market_data"]["config"] == {"lookback_days": 2}
