"""The command lines a new user runs: `stocksync ...` and the `dagster` CLI on this project."""

import datetime as dt
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from stocksync_dagster.cli import main as cli_main
from stocksync_dagster.cli.backfill import settled_range
from stocksync_dagster.cli.demo import format_summary
from stocksync_dagster.cli.instance import CODE_LOCATION, workspace_file
from stocksync_dagster.cli.runs import daemon_is_running, launch_command, launch_error
from stocksync_dagster.cli.status import check_status, partition_status, shanghai_time
from stocksync_dagster.core.errors import ConfigError
from stocksync_dagster.core.settings import Settings
from tests.support import market_sync_command

ROOT = Path(__file__).resolve().parents[1]
STOCKSYNC = [sys.executable, "-m", "stocksync_dagster.cli.main"]
DAGSTER = [str(Path(sys.executable).with_name("dagster"))]


def run(
    args: list[str], cwd: Path, timeout: float = 180, **env: str
) -> subprocess.CompletedProcess:
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STOCKSYNC_", "TUSHARE", "BAOSTOCK"))
    }
    environment.pop("DAGSTER_HOME", None)
    environment.update(env)
    return subprocess.run(
        args, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout, check=False
    )


def instance_runs(home: Path) -> list[dg.DagsterRun]:
    """Every run in the run storage of the Dagster instance at `home`."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return list(instance.get_runs())


def rows(database: Path, sql: str) -> int:
    with sqlite3.connect(database) as connection:
        return connection.execute(sql).fetchone()[0]


@pytest.mark.slow
def test_demo_from_a_clean_directory(tmp_path: Path) -> None:
    result = run([*STOCKSYNC, "demo", "--days", "5", "--stocks", "40"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "daily_bar" in result.stdout and "done in" in result.stdout
    database = tmp_path / ".stocksync" / "warehouse.db"
    assert rows(database, "SELECT count(DISTINCT trade_date) FROM daily_bar") == 5
    assert rows(database, "SELECT count(*) FROM adj_factor") == rows(
        database, "SELECT count(*) FROM daily_bar"
    )
    assert 30 < rows(database, "SELECT count(*) FROM stock_basic") <= 40  # --stocks reached it
    assert not re.search(r"\s\d+\.0\s", result.stdout)  # counts print as integers
    assert (tmp_path / ".stocksync" / "dagster").is_dir()  # the persistent Dagster instance
    runs = instance_runs(tmp_path / ".stocksync" / "dagster")
    assert sorted(r.job_name for r in runs) == ["market_sync", "reference_sync"]
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    assert all(r.run_config["resources"]["source"]["config"] == {"stocks": 40} for r in runs)
    status = run([*STOCKSYNC, "status"], cwd=tmp_path)
    assert status.returncode == 0, status.stderr[-3000:]
    assert "daily_bars" in status.stdout and "sync failures: none" in status.stdout


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STOCKSYNC_SOURCE", "yahoo"),
        ("STOCKSYNC_START_DATE", "2024/01/01"),
        ("STOCKSYNC_DATABASE_URL", "oracle://scott:tiger-secret@db/x"),
    ],
)
def test_bad_configuration_is_one_line_naming_the_setting(
    tmp_path: Path, variable: str, value: str
) -> None:
    result = run([*STOCKSYNC, "status"], cwd=tmp_path, **{variable: value})
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {variable}: ")
    assert "Traceback" not in result.stderr
    assert "tiger-secret" not in result.stderr + result.stdout


def test_doctor_reports_an_unreachable_database_without_its_password(tmp_path: Path) -> None:
    result = run(
        [*STOCKSYNC, "doctor"],
        cwd=tmp_path,
        STOCKSYNC_SOURCE="demo",
        STOCKSYNC_DATABASE_URL="postgresql+psycopg://user:hunter2@127.0.0.1:1/nowhere",
    )
    assert result.returncode == 1
    assert "FAIL  warehouse" in result.stdout and "ok    demo" in result.stdout
    assert "hunter2" not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
def test_dagster_validates_the_workspace() -> None:
    result = run([*DAGSTER, "definitions", "validate", "-w", "workspace.yaml"], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_dagster_cli_runs_a_partition_range_of_the_market_job(tmp_path: Path) -> None:
    database = tmp_path / "warehouse.db"
    result = run(
        market_sync_command(DAGSTER[0], "2025-08-04", "2025-08-08"),
        cwd=tmp_path,
        DAGSTER_HOME=str(tmp_path),
        STOCKSYNC_SOURCE="demo",
        STOCKSYNC_DATABASE_URL=f"sqlite:///{database}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert rows(database, "SELECT count(DISTINCT trade_date) FROM daily_bar") == 5


DEMO_ENV = {
    "STOCKSYNC_SOURCE": "demo",
    "STOCKSYNC_START_DATE": "2025-08-01",
    "STOCKSYNC_SOURCE_RETRIES": "1",
    "STOCKSYNC_SOURCE_RETRY_DELAY_SECONDS": "0.1",
}


@pytest.mark.slow
def test_backfill_is_a_named_job_run_with_range_tags_in_the_instance(tmp_path: Path) -> None:
    result = run(
        [*STOCKSYNC, "backfill", "2025-08-04", "2025-08-08", "--asset", "daily_bars"],
        cwd=tmp_path,
        **DEMO_ENV,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no Dagster daemon is running: running in this process" in result.stdout
    assert "Warning" not in result.stderr  # no Dagster warning noise
    runs = instance_runs(tmp_path / ".stocksync" / "dagster")
    assert [r.job_name for r in runs] == ["market_sync"]  # never __ephemeral_asset_job__
    (backfill,) = runs
    assert backfill.status == dg.DagsterRunStatus.SUCCESS
    assert backfill.tags["dagster/asset_partition_range_start"] == "2025-08-04"
    assert backfill.tags["dagster/asset_partition_range_end"] == "2025-08-08"
    assert backfill.tags["stocksync/trigger"] == "cli-backfill"
    assert backfill.asset_selection == {dg.AssetKey("daily_bars")}
    assert f"run {backfill.run_id} (market_sync)" in result.stdout
    assert "[PASS] daily_bars:ohlc_sanity" in result.stdout  # the checks' outcome is printed


def test_backfill_of_an_unknown_asset_is_one_error_line(tmp_path: Path) -> None:
    result = run(
        [*STOCKSYNC, "backfill", "2025-08-04", "2025-08-08", "--asset", "bogus"],
        cwd=tmp_path,
        **DEMO_ENV,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --asset: unknown asset 'bogus' (market_sync backfills daily_bars, adj_factor)"
    ]
    assert not (tmp_path / ".stocksync").exists()  # refused before touching anything


def test_backfill_usage_names_start_and_end() -> None:
    result = CliRunner().invoke(cli_main.cli, ["backfill", "--help"])
    assert result.exit_code == 0
    assert "Usage: cli backfill [OPTIONS] START END" in result.output
    assert "%Y" not in result.output
    bad = CliRunner().invoke(cli_main.cli, ["backfill", "2025/08/04", "2025-08-08"])
    assert bad.exit_code == 2 and "is not a date written YYYY-MM-DD" in bad.output


def test_an_end_after_the_last_settled_day_is_cut_with_a_note() -> None:
    settings = Settings.from_env()
    latest = dt.date(2025, 8, 8)
    start, end, note = settled_range(dt.date(2025, 8, 4), dt.date(2025, 12, 31), settings, latest)
    assert (start, end) == (dt.date(2025, 8, 4), latest)
    assert note.startswith("note: END 2025-12-31 is after the last settled trading day 2025-08-08")
    assert note.endswith("loading up to 2025-08-08")
    assert settled_range(dt.date(2025, 8, 4), latest, settings, latest)[2] == ""
    with pytest.raises(ConfigError, match="START: 2025-08-11 is after the last settled trading"):
        settled_range(dt.date(2025, 8, 11), dt.date(2025, 8, 12), settings, latest)
    with pytest.raises(ConfigError, match="START: 2025-08-08 is after END 2025-08-04"):
        settled_range(latest, dt.date(2025, 8, 4), settings, latest)


def test_status_lists_assets_in_name_order_with_zoned_times() -> None:
    defs = dg.Definitions(assets=[dg.AssetSpec(name) for name in ("zeta", "alpha", "mid")])
    frame = partition_status(defs, dg.DagsterInstance.ephemeral())
    assert list(frame["asset"]) == ["alpha", "mid", "zeta"]
    assert shanghai_time(0) == "1970-01-01 08:00+08:00"


def test_status_shows_the_last_completed_check_result_not_the_planned_one(
    sqlite_url: str,
) -> None:
    from stocksync_dagster.cli.runs import materialize_range, materialize_unpartitioned
    from stocksync_dagster.definitions import defs
    from stocksync_dagster.resources import DemoSourceResource, WarehouseResource
    from tests.orchestration import DownSourceResource

    resources = {
        "source": DemoSourceResource(stocks=20),
        "warehouse": WarehouseResource(url=sqlite_url),
    }
    days = (dt.date(2025, 8, 4), dt.date(2025, 8, 5))
    with dg.instance_for_test() as instance:
        assert materialize_unpartitioned(defs, instance, resources=resources).success
        assert materialize_range(defs, instance, *days, resources=resources).success
        down = {**resources, "source": DownSourceResource()}
        # The day after fails at once: its checks were planned, never evaluated.
        assert not materialize_range(defs, instance, days[1], days[1], resources=down).success
        results = dict(check_status(defs, instance)[["check", "result"]].values)
    assert results["daily_bars:ohlc_sanity"] == "PASSED (not executed in the last run)"
    assert results["stock_basic:stock_basic_integrity"] == "PASSED"


def test_demo_summary_prints_whole_numbers() -> None:
    summary = pd.DataFrame(
        [
            {"table": "trade_calendar", "rows": 729, "days": 729, "first": "2025-01-02"},
            {"table": "stock_basic", "rows": 300, "days": None, "first": None},
        ]
    )
    text = format_summary(summary)
    assert "729.0" not in text and " 729 " in f"{text} "
    assert "nan" not in text.lower() and "<NA>" not in text


def test_ui_passes_its_options_to_dagster_dev(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    launched: list[list[str]] = []
    monkeypatch.setattr(cli_main.os, "execvp", lambda _file, args: launched.append(list(args)))
    runner = CliRunner()
    for options in (["--host", "0.0.0.0", "-p", "3001"], ["-h", "0.0.0.0"]):
        result = runner.invoke(cli_main.cli, ["ui", *options])
        assert result.exit_code == 0, result.output
        assert launched.pop() == ["dagster", "dev", "-w", str(workspace_file()), *options]
    help_text = runner.invoke(cli_main.cli, ["ui", "--help"])
    assert help_text.exit_code == 0 and "dagster dev" in help_text.output
    assert not launched


def test_the_cli_code_location_is_the_workspace_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    project = yaml.safe_load((ROOT / "workspace.yaml").read_text())["load_from"][0]
    cli_workspace = yaml.safe_load(workspace_file().read_text())["load_from"][0]
    assert cli_workspace["python_module"]["location_name"] == CODE_LOCATION
    assert project["python_module"]["location_name"] == CODE_LOCATION
    assert cli_workspace["python_module"]["module_name"] == project["python_module"]["module_name"]


def test_a_queued_launch_is_dagster_job_launch_of_the_named_job(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    tags = {"dagster/asset_partition_range_start": "2025-08-04"}
    command = launch_command("market_sync", "run-1", tags, {}, ["daily_bars"])
    assert command[1:5] == ["-m", "dagster", "job", "launch"]
    assert command[command.index("-j") + 1] == "market_sync"
    assert json.loads(command[command.index("--tags") + 1]) == tags
    assert command[command.index("-w") + 1] == str(workspace_file())
    assert command[command.index("-o") + 1] == "daily_bars"


def test_a_daemon_counts_as_running_only_with_a_fresh_queue_heartbeat() -> None:
    def instance(**beats: float) -> dg.DagsterInstance:
        heartbeats = {name: SimpleNamespace(timestamp=t) for name, t in beats.items()}
        return SimpleNamespace(get_daemon_heartbeats=lambda: heartbeats)  # type: ignore[return-value]

    now = 1_000_000.0
    assert daemon_is_running(instance(QUEUED_RUN_COORDINATOR=now - 5), now)
    assert not daemon_is_running(instance(QUEUED_RUN_COORDINATOR=now - 600), now)
    assert not daemon_is_running(instance(SCHEDULER=now - 5), now)
    assert not daemon_is_running(instance(), now)


def test_a_refused_launch_is_reported_by_its_exception_message() -> None:
    stderr = (
        'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
        "dagster._core.errors.DagsterUserCodeProcessError: dagster._core.errors."
        "DagsterInvalidConfigError: Error in config for job market_sync\n"
        '    Error 1: Received unexpected config entry "stocks" at path root:resources\n'
        '\nStack Trace:\n  File "y.py", line 2\n'
    )
    assert launch_error(stderr) == (
        'Error in config for job market_sync: Error 1: Received unexpected config entry "stocks" '
        "at path root:resources"
    )
    assert launch_error("no exception here\n") == ""


def test_an_instance_copied_with_the_retired_event_log_loads_after_the_block_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stocksync_dagster.cli.instance import dagster_home

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    home = tmp_path / ".stocksync" / "dagster"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(
        "event_log_storage:\n"
        "  module: stocksync_dagster.instance_storage\n"
        "  class: BatchedSqliteEventLogStorage\n"
        "telemetry:\n"
        "  enabled: false\n"
    )
    assert dagster_home() == home.resolve()
    assert (home / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.event_log_storage).__name__ == "SqliteEventLogStorage"
