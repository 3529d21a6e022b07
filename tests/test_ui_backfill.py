"""End to end as a user does it: `dagster dev`, a UI backfill, then gap automation heals a wipe.

Starts `dagster dev` (webserver + daemon) on loopback with a temp DAGSTER_HOME holding the
project's dagster.yaml, the demo source and a temp SQLite warehouse; talks to the webserver's
GraphQL API with the same calls the UI makes.
"""

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from stocksync_dagster.definitions import defs
from stocksync_dagster.defs.market.gaps import GAP_TRIGGER
from tests.orchestration import recent_trading_days

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[1]
LOCATION = "stocksync_dagster"  # workspace.yaml, [tool.dg.project] and `stocksync ui` agree
DAYS = [d.isoformat() for d in recent_trading_days(6)]

# The UI's backfill dialog (LaunchAssetChoosePartitionsDialog) sends exactly this mutation.
LAUNCH_BACKFILL = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on PartitionKeysNotFoundError { message }
  }
}"""
BACKFILL_STATUS = """
query ($id: String!) {
  partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status numPartitions } }
}"""
PARTITION_STATS = """
query ($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode { partitionStats { numMaterialized numFailed numPartitions } }
  }
}"""
WIPE_ASSET = """
mutation ($ranges: [PartitionsByAssetSelector!]!) {
  wipeAssets(assetPartitionRanges: $ranges) { __typename ... on PythonError { message } }
}"""
UNFINISHED = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED")
GAP_RUNS = """
query ($trigger: String!) {
  runsOrError(filter: {tags: [{key: "stocksync/trigger", value: $trigger}]}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}"""
BACKFILL_RUNS = """
query ($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill {
      runs(limit: 50) { runId status tags { key value } stepStats { stepKey status } }
    }
  }
}"""
# What the asset's partition page shows: the latest materialization of that partition.
PARTITION_EVENT = """
query ($path: [String!]!, $partition: String!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode {
      assetMaterializations(partitions: [$partition], limit: 1) {
        partition
        metadataEntries {
          label
          ... on IntMetadataEntry { intValue }
          ... on BoolMetadataEntry { boolValue }
        }
      }
    }
  }
}"""
CHECK_EXECUTIONS = """
query ($path: [String!]!, $name: String!) {
  assetCheckExecutions(assetKey: {path: $path}, checkName: $name, limit: 1) { runId status }
}"""
START_SENSOR = """
mutation ($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename ... on Sensor { sensorState { status } } ... on PythonError { message }
  }
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


class UI:
    def __init__(self, url: str, warehouse: Path, log: Path) -> None:
        self.url, self.warehouse, self.log = url, warehouse, log

    def graphql(self, query: str, **variables: Any) -> dict:
        response = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=30
        )
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def backfill(self, assets: list[str], partitions: list[str]) -> str:
        """Launch a backfill as the UI's partition dialog does, wait until it succeeded."""
        params = {
            "tags": [],
            "assetSelection": [{"path": [asset]} for asset in assets],
            "partitionNames": partitions,
            "fromFailure": False,
        }
        launched = self.graphql(LAUNCH_BACKFILL, backfillParams=params)["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill_id = launched["backfillId"]

        def finished() -> str | None:
            data = self.graphql(BACKFILL_STATUS, id=backfill_id)["partitionBackfillOrError"]
            return data["status"] if data["status"] not in ("REQUESTED", "CANCELING") else None

        assert wait_for("the backfill", finished, timeout=150, every=2) == "COMPLETED_SUCCESS"
        return backfill_id

    def materialized(self, asset: str) -> int:
        data = self.graphql(PARTITION_STATS, path=[asset])
        return data["assetNodeOrError"]["partitionStats"]["numMaterialized"]

    def rows_per_day(self) -> dict[str, int]:
        with sqlite3.connect(self.warehouse) as db:
            rows = db.execute("SELECT trade_date, count(*) FROM daily_bar GROUP BY trade_date")
            return dict(rows.fetchall())


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UI]:
    root = tmp_path_factory.mktemp("e2e")
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
    warehouse = root / "warehouse.db"
    port = free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "STOCKSYNC_SOURCE": "demo",
        "STOCKSYNC_DATABASE_URL": f"sqlite:///{warehouse}",
        "STOCKSYNC_START_DATE": DAYS[0],
        "STOCKSYNC_ALERT_WEBHOOKS": "",
    }
    log = root / "dagster_dev.log"
    dagster = str(Path(sys.executable).with_name("dagster"))
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                dagster,
                "dev",
                "-w",
                str(PROJECT / "workspace.yaml"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert process.poll() is None, f"dagster dev exited:\n{log.read_text()[-3000:]}"
            try:
                return requests.get(f"{url}/server_info", timeout=2).ok
            except requests.ConnectionError:
                return False

        wait_for("the webserver", up, timeout=60)
        yield UI(url, warehouse, log)
    finally:
        # dagster dev, its webserver, daemon and code server share the session we started.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_ui_backfill_then_gap_automation_heals_a_deleted_partition(ui: UI) -> None:
    ui.backfill(["daily_bars"], DAYS)
    assert ui.materialized("daily_bars") == len(DAYS)
    rows = ui.rows_per_day()
    assert sorted(rows) == DAYS and all(n > 0 for n in rows.values())

    # Lose one day's rows, and the materializations (the UI's "Wipe materializations"). OSS
    # event storages cannot wipe single partitions (UnsupportedOperationError), so the whole
    # asset is wiped: gap automation must then refill every partition, the lost day included.
    lost = DAYS[2]
    with sqlite3.connect(ui.warehouse) as db:
        db.execute("DELETE FROM daily_bar WHERE trade_date = ?", (lost,))
    wiped = ui.graphql(WIPE_ASSET, ranges=[{"assetKey": {"path": ["daily_bars"]}}])
    assert wiped["wipeAssets"]["__typename"] == "AssetWipeSuccess", wiped
    assert ui.materialized("daily_bars") == 0

    selector = {
        "repositoryLocationName": LOCATION,
        "repositoryName": "__repository__",
        "sensorName": "gap_automation_sensor",
    }
    started = ui.graphql(START_SENSOR, selector=selector)["startSensor"]
    assert started["sensorState"]["status"] == "RUNNING", started

    # The newest day is left to the nightly and morning schedules: history is the rest.
    history = DAYS[:-1]

    def healed() -> bool:
        return ui.materialized("daily_bars") == len(history) and lost in ui.rows_per_day()

    wait_for("gap automation to heal the lost day", healed, timeout=150, every=2)
    assert ui.rows_per_day() == rows

    def gap_runs_done() -> list[dict] | None:
        runs = ui.graphql(GAP_RUNS, trigger=GAP_TRIGGER)["runsOrError"]["results"]
        return runs if runs and all(r["status"] not in UNFINISHED for r in runs) else None

    gap_runs = wait_for("the gap runs to finish", gap_runs_done, timeout=90, every=2)
    assert {r["status"] for r in gap_runs} == {"SUCCESS"}
    assert ui.materialized("adj_factor") == len(history)  # never materialized before: filled
    assert ui.materialized("daily_bars") == len(history)
    tags = {t["key"]: t["value"] for t in gap_runs[-1]["tags"]}
    ranges = {
        (t["dagster/asset_partition_range_start"], t["dagster/asset_partition_range_end"])
        for t in ({x["key"]: x["value"] for x in r["tags"]} for r in gap_runs)
    }
    assert ranges == {(history[0], history[-1])}  # one range run, the newest day not in it
    assert tags["datasource"] == "demo"  # the source's run-level concurrency limit applies
    assert "dagster/backfill" in tags  # a backfill: the multi-run policy made range runs
    assert {t["key"]: t["value"] for t in gap_runs[0]["tags"]}["dagster/backfill"] == tags[
        "dagster/backfill"
    ]  # one tick, one backfill


def test_ui_backfill_of_both_market_assets_is_one_run_with_each_partitions_own_figures(
    ui: UI,
) -> None:
    """The UI's "Materialize" of daily_bars + adj_factor over a range: one run, per-day truth."""
    backfill_id = ui.backfill(["daily_bars", "adj_factor"], DAYS)
    [run] = ui.graphql(BACKFILL_RUNS, id=backfill_id)["partitionBackfillOrError"]["runs"]
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert (
        tags["dagster/asset_partition_range_start"],
        tags["dagster/asset_partition_range_end"],
    ) == (
        DAYS[0],
        DAYS[-1],
    )  # one run for the whole range, both assets in it
    # One step fetches both assets (one source session); all checks of an asset are evaluated
    # together: one step per asset, not one per check.
    assert sorted(s["stepKey"] for s in run["stepStats"]) == [
        "adj_factor_checks",
        "daily_bars_checks",
        "market_data",
        "second_source_checks",
    ]
    assert {s["status"] for s in run["stepStats"]} == {"SUCCESS"}
    # ... and every one of them was evaluated in that run (passed, or failed with a reason).
    for check in defs.resolve_asset_graph().asset_check_keys:
        path = check.asset_key.path
        if path[0] not in ("daily_bars", "adj_factor"):
            continue
        [execution] = ui.graphql(CHECK_EXECUTIONS, path=path, name=check.name)[
            "assetCheckExecutions"
        ]
        assert execution["runId"] == run["runId"], check
        assert execution["status"] in ("SUCCEEDED", "FAILED"), (check, execution)

    rows = ui.rows_per_day()
    for day in DAYS:
        [event] = ui.graphql(PARTITION_EVENT, path=["daily_bars"], partition=day)[
            "assetNodeOrError"
        ]["assetMaterializations"]
        metadata = {
            e["label"]: e.get("intValue", e.get("boolValue")) for e in event["metadataEntries"]
        }
        # The partition's own day, not the range's totals.
        assert metadata["dagster/row_count"] == rows[day], day
        assert metadata["market_open"] is True
        assert metadata["failed_stocks"] == 0
    assert len(set(rows.values())) > 1 or len(DAYS) == 1  # days differ, so totals would show
