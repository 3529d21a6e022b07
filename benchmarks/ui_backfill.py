"""A backfill launched the way the UI launches it, against the same range through the CLI.

`dagster dev` (webserver + daemon) runs on loopback with a temporary DAGSTER_HOME holding the
project's dagster.yaml, the demo source and a scratch SQLite warehouse; the backfill is the
GraphQL mutation the UI's "Materialize -> partition range" dialog sends, timed from launch until
the backfill completes. The CLI case is `stocksync backfill FIRST LAST` in a fresh process.

    python -m benchmarks.ui_backfill --partitions 10
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from benchmarks.common import ROOT, free_port
from stocksync_dagster.core import trading_calendar

LAUNCH_BACKFILL = """
mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""
BACKFILL = """
query ($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill { status runs(limit: 100) { runId status } }
  }
}"""
RUN_STEPS = """
query ($id: ID!) {
  runOrError(runId: $id) {
    ... on Run { stepStats { stepKey status } creationTime startTime endTime }
  }
}"""


def _days(n: int) -> list[str]:
    last = trading_calendar.last_settled_trading_day()
    days = trading_calendar.trading_days(last.replace(year=last.year - 1), last)
    return [d.isoformat() for d in days[-n:]]


def _env(root: Path, first: str) -> dict[str, str]:
    home = root / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "STOCKSYNC_SOURCE": "demo",
        "STOCKSYNC_DATABASE_URL": f"sqlite:///{root / 'warehouse.db'}",
        "STOCKSYNC_START_DATE": first,
        "STOCKSYNC_ALERT_WEBHOOKS": "",
    }


def _graphql(url: str, query: str, **variables: object) -> dict:
    response = requests.post(
        f"{url}/graphql", json={"query": query, "variables": variables}, timeout=30
    )
    response.raise_for_status()
    body = response.json()
    if "errors" in body:
        raise RuntimeError(body["errors"])
    return body["data"]


def ui_backfill(days: list[str]) -> tuple[float, float, int, int]:
    """Seconds from launch to completion, seconds inside runs, runs, steps (of all runs)."""
    with tempfile.TemporaryDirectory(prefix="stocksync_ui_bench_") as tmp:
        env = _env(Path(tmp), days[0])
        port = free_port()
        dagster = str(Path(sys.executable).with_name("dagster"))
        log = open(Path(tmp) / "dagster_dev.log", "w")  # noqa: SIM115 - closed below
        process = subprocess.Popen(
            [
                dagster,
                "dev",
                "-w",
                str(ROOT / "workspace.yaml"),
                "--host",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if requests.get(f"{url}/server_info", timeout=2).ok:
                        break
                except requests.ConnectionError:
                    pass
                time.sleep(0.5)
            time.sleep(5)  # let the code location and the daemon come up, as a person would
            params = {
                "tags": [],
                "assetSelection": [{"path": ["daily_bars"]}, {"path": ["adj_factor"]}],
                "partitionNames": days,
                "fromFailure": False,
            }
            began = time.monotonic()
            launched = _graphql(url, LAUNCH_BACKFILL, params=params)["launchPartitionBackfill"]
            if launched["__typename"] != "LaunchBackfillSuccess":
                raise RuntimeError(launched)
            while True:
                data = _graphql(url, BACKFILL, id=launched["backfillId"])[
                    "partitionBackfillOrError"
                ]
                if data["status"] not in ("REQUESTED", "CANCELING"):
                    break
                time.sleep(0.5)
            seconds = time.monotonic() - began
            if data["status"] != "COMPLETED_SUCCESS":
                raise RuntimeError(f"backfill ended {data['status']}")
            runs = [_graphql(url, RUN_STEPS, id=r["runId"])["runOrError"] for r in data["runs"]]
            steps = sum(len(r["stepStats"]) for r in runs)
            in_runs = sum(r["endTime"] - r["startTime"] for r in runs)
            launched_at = time.time() - seconds
            print(
                "  run created {:.1f}s after launch, started {:.1f}s later, ran {:.1f}s; backfill "
                "marked complete {:.1f}s after the last run ended".format(
                    min(r["creationTime"] for r in runs) - launched_at,
                    min(r["startTime"] for r in runs) - min(r["creationTime"] for r in runs),
                    in_runs,
                    launched_at + seconds - max(r["endTime"] for r in runs),
                )
            )
            return seconds, in_runs, len(runs), steps
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
            log.close()


def cli_backfill(days: list[str]) -> float:
    with tempfile.TemporaryDirectory(prefix="stocksync_cli_bench_") as tmp:
        env = _env(Path(tmp), days[0])
        stocksync = str(Path(sys.executable).with_name("stocksync"))
        began = time.monotonic()
        subprocess.run(
            [stocksync, "backfill", days[0], days[-1]],
            cwd=tmp,
            env=env,
            check=True,
            capture_output=True,
        )
        return time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=10)
    args = parser.parse_args()
    days = _days(args.partitions)
    cli = cli_backfill(days)
    ui, in_runs, runs, steps = ui_backfill(days)
    print(f"range {days[0]}..{days[-1]} ({len(days)} partitions, daily_bars + adj_factor, demo)")
    print("| case | wall s | in runs s | runs | steps | vs CLI |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| CLI `stocksync backfill` | {cli:.1f} | | 1 | | 1.0x |")
    print(
        f"| UI backfill (launchPartitionBackfill) | {ui:.1f} | {in_runs:.1f} | {runs} | {steps} "
        f"| {ui / cli:.1f}x |"
    )


if __name__ == "__main__":
    main()
