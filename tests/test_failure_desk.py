"""`stocksync failures` (the failure desk, 补拉) and read-only commands that create nothing."""

import csv
import datetime as dt
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from stocksync_dagster.core.sources.demo import DemoSource
from stocksync_dagster.core.warehouse import Warehouse, schema
from stocksync_dagster.core.warehouse.failures import FailureFilter, list_failures, reopen_failures
from stocksync_dagster.core.warehouse.upsert import upsert_frame
from stocksync_dagster.defs.market.repair import repair_sensor
from stocksync_dagster.resources import WarehouseResource
from tests.orchestration import build_defs

ROOT = Path(__file__).resolve().parents[1]
STOCKSYNC = [sys.executable, "-m", "stocksync_dagster.cli.main"]
BASE = dt.datetime(2025, 9, 1, 12, tzinfo=dt.UTC)


def stocksync(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSYNC_")}
    environment.pop("DAGSTER_HOME", None)
    environment.update(PYTHONPATH=str(ROOT), STOCKSYNC_SOURCE="demo", **env)
    return subprocess.run(
        [*STOCKSYNC, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120
    )


def seed(url: str) -> None:
    """30 rows: days 2025-08-04.. (one per weekday), three statuses, two assets."""
    rows = []
    day = dt.date(2025, 8, 4)
    for i in range(30):
        while day.weekday() >= 5:
            day += dt.timedelta(days=1)
        status = ("pending", "abandoned", "resolved")[i % 3]
        rows.append(
            {
                "asset": "daily_bars" if i % 2 == 0 else "adj_factor",
                "trade_date": day,
                "code": f"{600000 + i}.SH",
                "error_class": "SourceError",
                "error": f"baostock query_history_k_data_plus: error {i}",
                "retry_count": 5 if status == "abandoned" else 1,
                "status": status,
                "first_attempt_at": BASE,
                "last_attempt_at": BASE + dt.timedelta(minutes=i),
            }
        )
        day += dt.timedelta(days=1)
    with Warehouse(url).begin() as connection:
        connection.execute(sa.insert(schema.sync_failure), rows)


def test_list_is_newest_first_paged_and_filtered(warehouse_url: str) -> None:
    seed(warehouse_url)
    with Warehouse(warehouse_url).connect() as connection:
        page1 = list_failures(connection, FailureFilter(), page=1, page_size=7)
        page5 = list_failures(connection, FailureFilter(), page=5, page_size=7)
        abandoned = list_failures(connection, FailureFilter(statuses=("abandoned",)))
        one = list_failures(connection, FailureFilter(codes=("600004.SH",)))
        window = list_failures(
            connection,
            FailureFilter(
                assets=("daily_bars",), since=dt.date(2025, 8, 5), until=dt.date(2025, 8, 8)
            ),
        )
    assert list(page1["code"]) == [f"{600029 - i}.SH" for i in range(7)]
    assert list(page5["code"]) == ["600001.SH", "600000.SH"]
    assert set(abandoned["status"]) == {"abandoned"} and len(abandoned) == 10
    assert list(one["trade_date"]) == [dt.date(2025, 8, 8)]
    assert list(window["code"]) == ["600004.SH", "600002.SH"]


def test_cli_lists_csv_and_json_and_pages(sqlite_url: str, tmp_path: Path) -> None:
    seed(sqlite_url)
    table = stocksync(
        ["failures", "--status", "abandoned", "--page-size", "4"],
        tmp_path,
        STOCKSYNC_DATABASE_URL=sqlite_url,
    )
    assert table.returncode == 0, table.stderr
    assert "page 1 of 3 (10 rows, newest first)" in table.stdout
    assert "600028.SH" in table.stdout and "600001.SH" not in table.stdout
    exported = stocksync(
        ["failures", "--asset", "adj_factor", "--format", "csv", "--page-size", "100"],
        tmp_path,
        STOCKSYNC_DATABASE_URL=sqlite_url,
    )
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert len(rows) == 15 and {r["asset"] for r in rows} == {"adj_factor"}
    assert rows[0]["code"] == "600029.SH" and rows[0]["last_attempt_at"].startswith("2025-09-01")
    as_json = stocksync(
        ["failures", "--code", "600003.SH", "--format", "json"],
        tmp_path,
        STOCKSYNC_DATABASE_URL=sqlite_url,
    )
    [record] = json.loads(as_json.stdout)
    assert record["trade_date"] == "2025-08-07" and record["status"] == "pending"
    # nothing created beside the warehouse (and SQLite's own WAL files)
    assert {p.name for p in tmp_path.iterdir()} - {"warehouse.db-wal", "warehouse.db-shm"} == {
        "warehouse.db"
    }


def test_retry_reopens_abandoned_rows_and_the_repair_sensor_requests_them(
    sqlite_url: str, tmp_path: Path
) -> None:
    seed(sqlite_url)
    defs = build_defs(sqlite_url)
    with dg.instance_for_test() as instance:

        def requested() -> set[tuple[str, str, str]]:
            context = dg.build_sensor_context(
                instance=instance,
                resources={"warehouse": WarehouseResource(url=sqlite_url)},
                definitions=defs,
            )
            result = repair_sensor(context)
            return {
                (
                    r.tags["stocksync/repair_asset"],
                    r.tags["dagster/asset_partition_range_start"],
                    r.run_key or "",
                )
                for r in result.run_requests or []
            }

        with Warehouse(sqlite_url).begin() as connection:  # only the abandoned rows stay open
            connection.execute(
                sa.update(schema.sync_failure)
                .where(schema.sync_failure.c.status == "pending")
                .values(status="resolved")
            )
        assert requested() == set()
        done = stocksync(
            [
                "failures",
                "retry",
                "--status",
                "abandoned",
                "--asset",
                "daily_bars",
                "--until",
                "2025-08-20",
            ],
            tmp_path,
            STOCKSYNC_DATABASE_URL=sqlite_url,
        )
        assert done.returncode == 0, done.stderr
        assert "re-opened 2 sync_failure row(s) as pending" in done.stdout
        with Warehouse(sqlite_url).connect() as connection:
            reopened = list_failures(connection, FailureFilter(statuses=("pending",)))
        assert sorted(reopened["code"]) == ["600004.SH", "600010.SH"]
        assert set(reopened["retry_count"]) == {0}
        first = requested()
        assert {(asset, day) for asset, day, _ in first} == {
            ("daily_bars", "2025-08-08"),
            ("daily_bars", "2025-08-18"),
        }
    with Warehouse(sqlite_url).begin() as connection:  # resolved rows are never re-opened
        assert reopen_failures(connection, FailureFilter(statuses=("resolved",))) == 0


def test_read_only_commands_in_a_missing_directory_create_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'warehouse.db'}"
    for args in (["status"], ["failures"], ["failures", "--format", "json"]):
        result = stocksync(args, tmp_path, STOCKSYNC_DATABASE_URL=url)
        assert result.returncode == 1, (args, result.stdout)
        assert result.stderr.strip().startswith("error: STOCKSYNC_DATABASE_URL: no warehouse at")
        assert "its directory does not exist" in result.stderr
        assert "Traceback" not in result.stderr
        assert list(tmp_path.iterdir()) == []  # no database, directory or Dagster instance
    default = stocksync(["status"], tmp_path)  # the default ./.stocksync/warehouse.db
    assert default.returncode == 1 and "no warehouse at" in default.stderr
    assert list(tmp_path.iterdir()) == []


def test_status_on_an_existing_warehouse_creates_no_dagster_instance(
    sqlite_url: str, tmp_path: Path
) -> None:
    seed(sqlite_url)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    result = stocksync(["status"], cwd, STOCKSYNC_DATABASE_URL=sqlite_url)
    assert result.returncode == 0, result.stderr
    assert "Dagster instance: none yet" in result.stdout
    assert "`stocksync failures` lists them" in result.stdout
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize("option", [["--since", "2025-08-09", "--until", "2025-08-01"]])
def test_bad_filters_are_one_error_line(option: list[str], sqlite_url: str, tmp_path: Path) -> None:
    seed(sqlite_url)
    result = stocksync(["failures", *option], tmp_path, STOCKSYNC_DATABASE_URL=sqlite_url)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --since: 2025-08-09 is after --until 2025-08-01"


def test_open_failures_check_names_the_newest_rows_and_the_desk_commands(sqlite_url: str) -> None:
    from stocksync_dagster.checks.failures import evaluate_open_failures

    seed(sqlite_url)
    result = evaluate_open_failures(Warehouse(sqlite_url), "daily_bars")
    newest = str(result.metadata["newest"].value)
    # daily_bars' unresolved rows, newest attempt first: 600028, 600024, 600022, ...
    assert newest.index("600028.SH") < newest.index("600024.SH") < newest.index("600022.SH")
    assert "600026.SH" not in newest  # resolved (i % 3 == 2) rows are not listed
    desk = str(result.metadata["failure_desk"].value)
    assert "`stocksync failures --asset daily_bars`" in desk
    assert "stocksync failures retry --asset daily_bars" in desk


def test_retry_now_launches_the_repair_run_at_once(sqlite_url: str, tmp_path: Path) -> None:
    day = dt.date(2025, 8, 5)
    # The repair run checks its codes against stock_basic: the CLI's demo market's master.
    master = DemoSource().stock_basic()
    code = master[(master["status"] == "listed") & (master["list_date"] < day)]["code"].iloc[0]
    with Warehouse(sqlite_url).begin() as connection:
        upsert_frame(connection, schema.stock_basic, master)
        connection.execute(
            sa.insert(schema.sync_failure),
            [
                {
                    "asset": "daily_bars",
                    "trade_date": day,
                    "code": code,
                    "error_class": "SourceError",
                    "error": "gave up",
                    "retry_count": 5,
                    "status": "abandoned",
                    "first_attempt_at": BASE,
                    "last_attempt_at": BASE,
                }
            ],
        )
    home = tmp_path / "dagster"
    result = stocksync(
        ["failures", "retry", "--code", code, "--now"],
        tmp_path,
        STOCKSYNC_DATABASE_URL=sqlite_url,
        STOCKSYNC_START_DATE="2025-08-01",
        DAGSTER_HOME=str(home),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "re-opened 1 sync_failure row(s) as pending" in result.stdout
    assert "repair run" in result.stdout and "SUCCESS" in result.stdout
    with dg.DagsterInstance.from_config(str(home)) as instance:
        [run] = instance.get_runs()
        assert run.tags["stocksync/trigger"] == "repair-sensor"
        assert run.tags["dagster/asset_partition_range_start"] == day.isoformat()
    with Warehouse(sqlite_url).connect() as connection:
        [row] = list_failures(connection).itertuples()
    assert row.status == "resolved"


def test_doctor_reports_a_missing_warehouse_and_creates_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no' / 'warehouse.db'}"
    email = "smtp://ops:PASSWORD99@127.0.0.1:2525?to=a@example.com"
    result = stocksync(
        ["doctor"], tmp_path, STOCKSYNC_DATABASE_URL=url, STOCKSYNC_ALERT_EMAIL=email
    )
    assert "not created yet" in result.stdout
    assert "STOCKSYNC_ALERT_EMAIL: smtp://ops:***@127.0.0.1:2525" in result.stdout
    assert "PASSWORD99" not in result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []
