"""kill -9 of a run in the middle of its partition write, launched the way `dagster dev` does.

`dagster job launch` starts the project's code server (DefaultRunLauncher, as under `dagster dev`
or the daemon); the run worker and its step process run `tests/fakes/crash_defs.py`, which stops
inside the write transaction after the rows are written and signals readiness. The test then
SIGKILLs the run's processes. Afterwards the partition holds exactly the old rows; the code
server marks the run FAILURE ("terminated by signal 9"); the partition shows FAILED, the gap
automation (`gap_automation_sensor`'s condition) requests it and that rerun writes exactly the
new rows.

Runs executed in-process (`dagster asset materialize`, `stocksync backfill`) have no process
watching them: killed, they stay STARTED until someone terminates them (docs/reliability.md).
"""

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import pandas as pd
import psutil
import pytest
import sqlalchemy as sa

from stocksync_dagster.core.sources.demo import shared_market
from stocksync_dagster.core.warehouse import Warehouse, schema
from stocksync_dagster.core.warehouse.upsert import upsert_frame
from stocksync_dagster.defs.market.partitions import trading_days
from stocksync_dagster.resources import DemoSourceResource
from tests.orchestration import build_defs, materialize_range
from tests.support import closing_warehouse

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).with_name("dagster"))
ORIGIN = dt.date(2025, 8, 1)
DAY = dt.date(2025, 8, 5)
INSTANCE_YAML = """\
run_coordinator:
  module: dagster.core.run_coordinator
  class: DefaultRunCoordinator
telemetry:
  enabled: false
"""


def market_rows() -> pd.DataFrame:
    """The new rows: what the demo source (300 stocks, seed 42, as in definitions.py) serves."""
    return shared_market(300, 42).bars(DAY, DAY)


def old_rows() -> pd.DataFrame:
    """What an earlier sync left: half of the stocks, every value different from the new rows."""
    frame = market_rows().sort_values("code").head(150).copy()
    for column in ("open", "high", "low", "close", "pre_close", "amount"):
        frame[column] = frame[column] * 1.05
    frame["volume"] = frame["volume"] + 100
    return frame


def stored(url: str) -> pd.DataFrame:
    with closing_warehouse(url) as connection:
        frame = pd.read_sql(
            sa.text("SELECT * FROM daily_bar ORDER BY code, trade_date"), connection
        )
    frame["trade_date"] = pd.to_datetime(frame["trade_date"]).dt.date
    return frame


def same_rows(actual: pd.DataFrame, wanted: pd.DataFrame) -> bool:
    wanted = wanted.sort_values(["code", "trade_date"]).reset_index(drop=True)
    actual = actual[list(wanted.columns)].reset_index(drop=True)
    try:
        pd.testing.assert_frame_equal(actual, wanted, check_dtype=False)
    except AssertionError:
        return False
    return True


def launch(home: Path, url: str, ready: Path, run_id: str) -> subprocess.Popen:
    """`dagster job launch` of market_sync/daily_bars for DAY, in its own session."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSYNC_")}
    environment.update(
        DAGSTER_HOME=str(home),
        PYTHONPATH=str(ROOT),
        STOCKSYNC_SOURCE="demo",
        STOCKSYNC_START_DATE=ORIGIN.isoformat(),
        STOCKSYNC_DATABASE_URL=url,
        STOCKSYNC_CRASH_READY=str(ready),
    )
    tags = {
        "dagster/asset_partition_range_start": DAY.isoformat(),
        "dagster/asset_partition_range_end": DAY.isoformat(),
    }
    # The default executor (in_process) runs the step in the run worker itself: that process
    # holds the transaction.
    command = [
        DAGSTER,
        "job",
        "launch",
        "-m",
        "tests.fakes.crash_defs",
        "-j",
        "market_sync",
        "-o",
        "market_data",  # the step of daily_bars (and adj_factor, never reached: bars come first)
        "--tags",
        json.dumps(tags),
        "--run-id",
        run_id,
    ]
    return subprocess.Popen(
        command,
        cwd=home,
        env=environment,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(path: Path, launcher: subprocess.Popen, seconds: float = 90) -> int:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the run never reached its write; launcher said:\n{_kill(launcher)}"
            )
        time.sleep(0.1)
    return int(path.read_text())


def _kill(process: subprocess.Popen) -> str:
    """Stop a launcher and everything it started; return its output."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for child in children:
        child.kill()
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    output, _ = process.communicate(timeout=10)
    return output or ""


def wait_for_status(
    instance: dg.DagsterInstance, run_id: str, seconds: float = 30
) -> dg.DagsterRun:
    deadline = time.monotonic() + seconds
    while True:
        run = instance.get_run_by_id(run_id)
        if (run is not None and run.is_finished) or time.monotonic() > deadline:
            return run  # type: ignore[return-value]
        time.sleep(0.2)


def test_kill_9_mid_write_leaves_old_rows_fails_the_run_and_gap_automation_heals_it(
    warehouse_url: str, tmp_path: Path
) -> None:
    with Warehouse(warehouse_url).begin() as connection:
        upsert_frame(connection, schema.daily_bar, old_rows())
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE_YAML)
    ready, run_id = tmp_path / "ready", str(uuid.uuid4())

    launcher = launch(home, warehouse_url, ready, run_id)
    try:
        worker = psutil.Process(wait_for(ready, launcher))
        # The new rows are written inside the open transaction; the commit is still to come.
        for process in [worker, *worker.children(recursive=True)]:
            os.kill(process.pid, signal.SIGKILL)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            run = wait_for_status(instance, run_id)
            assert run.status == dg.DagsterRunStatus.FAILURE
            messages = [e.message for e in instance.all_logs(run_id)]
            assert any("was terminated by signal 9 (SIGKILL)" in m for m in messages)
            launcher.wait(timeout=30)  # the code server stops once its runs are over
            assert same_rows(stored(warehouse_url), old_rows())  # old rows, not a mix

            key = DAY.isoformat()
            status = instance.get_status_by_partition(
                dg.AssetKey("daily_bars"), [key], trading_days
            )
            assert status == {key: dg.AssetPartitionStatus.FAILED}

            # The project's own definitions (demo source as in the run above) heal it.
            defs = build_defs(warehouse_url, DemoSourceResource())
            automation = dg.evaluate_automation_conditions(defs=defs, instance=instance)
            assert key in automation.get_requested_partitions(dg.AssetKey("daily_bars"))
            rerun = materialize_range(defs, instance, key, key, ("daily_bars",))
            assert rerun.success
            assert same_rows(stored(warehouse_url), market_rows())  # exactly the new rows
            status = instance.get_status_by_partition(
                dg.AssetKey("daily_bars"), [key], trading_days
            )
            assert status == {key: dg.AssetPartitionStatus.MATERIALIZED}
    finally:
        if launcher.poll() is None:
            _kill(launcher)
