"""The command lines a new user runs: `stocksync ...` and the `dagster` CLI on this project."""

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

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


def rows(database: Path, sql: str) -> int:
    with sqlite3.connect(database) as connection:
        return connection.execute(sql).fetchone()[0]


@pytest.mark.slow
def test_demo_from_a_clean_directory(tmp_path: Path) -> None:
    result = run([*STOCKSYNC, "demo", "--days", "5"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "daily_bar" in result.stdout and "done in" in result.stdout
    database = tmp_path / ".stocksync" / "warehouse.db"
    assert rows(database, "SELECT count(DISTINCT trade_date) FROM daily_bar") == 5
    assert rows(database, "SELECT count(*) FROM adj_factor") == rows(
        database, "SELECT count(*) FROM daily_bar"
    )
    assert rows(database, "SELECT count(*) FROM stock_basic") > 250
    assert (tmp_path / ".stocksync" / "dagster").is_dir()  # the persistent Dagster instance
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
def test_dagster_cli_materializes_a_partition_range(tmp_path: Path) -> None:
    database = tmp_path / "warehouse.db"
    result = run(
        [
            *DAGSTER,
            "asset",
            "materialize",
            "-m",
            "stocksync_dagster.definitions",
            "--select",
            "daily_bars",
            "--partition-range",
            "2025-08-04...2025-08-08",
        ],
        cwd=tmp_path,
        DAGSTER_HOME=str(tmp_path),
        STOCKSYNC_SOURCE="demo",
        STOCKSYNC_DATABASE_URL=f"sqlite:///{database}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert rows(database, "SELECT count(DISTINCT trade_date) FROM daily_bar") == 5
