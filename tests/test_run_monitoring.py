"""Stuck runs end: a killed run is FAILED and its `market_source` pool slot is freed.

The instance is the shipped one's run-monitoring setup with short timeouts, and a real
`dagster-daemon` runs beside it. The run (launched like the UI does, through the code server)
stops inside its write holding the pool slot (`tests/fakes/crash_defs.py`); the test SIGKILLs
the run process. The code server marks the run FAILURE; the daemon's run monitoring frees the
slot the dead step still claimed (`free_slots_after_run_end_seconds`; without it the slot stays
claimed for good, which is how this test was checked).
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import psutil
import pytest
import yaml

from tests.test_reliability_crash import _kill, launch, wait_for, wait_for_status

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[1]
DAEMON = str(Path(sys.executable).with_name("dagster-daemon"))
POOL = "market_source"


def instance_yaml() -> str:
    """The shipped dagster.yaml's concurrency and run monitoring, with second-scale timeouts."""
    shipped = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    monitoring = {
        **shipped["run_monitoring"],
        "poll_interval_seconds": 1,
        "free_slots_after_run_end_seconds": 2,
        "start_timeout_seconds": 30,
        "cancel_timeout_seconds": 30,
    }
    config = {
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": "DefaultRunCoordinator",
        },
        "concurrency": {"pools": shipped["concurrency"]["pools"]},
        "run_monitoring": monitoring,
        "telemetry": {"enabled": False},
    }
    return yaml.safe_dump(config)


def claimed(instance: dg.DagsterInstance) -> list[str]:
    info = instance.event_log_storage.get_concurrency_info(POOL)
    return [slot.run_id for slot in info.claimed_slots]


def wait_until(condition, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return condition()


def test_shipped_instance_configs_enable_run_monitoring() -> None:
    for path in (ROOT / "dagster.yaml", ROOT / "deploy" / "dagster.postgres.yaml"):
        monitoring = yaml.safe_load(path.read_text())["run_monitoring"]
        assert monitoring["enabled"] is True, path
        assert monitoring["start_timeout_seconds"] > 0
        assert monitoring["cancel_timeout_seconds"] > 0
        assert monitoring["free_slots_after_run_end_seconds"] > 0
        assert monitoring["max_runtime_seconds"] >= 4 * 3600


def test_job_max_runtimes_cover_a_year_of_backfill() -> None:
    from stocksync_dagster.definitions import defs

    runtimes = {
        name: int(defs.resolve_job_def(name).tags["dagster/max_runtime"])
        for name in ("market_sync", "nightly_sync", "reference_sync", "asset_health_checks")
    }
    assert runtimes["market_sync"] >= 4 * 3600  # a year of history for ~5,000 stocks
    assert all(seconds > 0 for seconds in runtimes.values())


def test_killed_run_is_failed_and_its_pool_slot_freed(sqlite_url: str, tmp_path: Path) -> None:
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml())
    with dg.DagsterInstance.from_config(str(home)):
        pass  # storage created once, before the daemon and the launcher both open it
    environment = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSYNC_")}
    environment.update(
        DAGSTER_HOME=str(home),
        PYTHONPATH=str(ROOT),
        STOCKSYNC_SOURCE="demo",
        STOCKSYNC_DATABASE_URL=sqlite_url,
    )
    daemon = subprocess.Popen(
        [DAEMON, "run", "-m", "tests.fakes.crash_defs"],
        cwd=home,
        env=environment,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ready, run_id = tmp_path / "ready", str(uuid.uuid4())
    launcher = launch(home, sqlite_url, ready, run_id)
    try:
        worker = psutil.Process(wait_for(ready, launcher))
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert claimed(instance) == [run_id]  # the run holds the pool slot
            for process in [worker, *worker.children(recursive=True)]:
                os.kill(process.pid, signal.SIGKILL)
            run = wait_for_status(instance, run_id, seconds=60)
            assert run.status == dg.DagsterRunStatus.FAILURE
            freed = wait_until(lambda: claimed(instance) == [], seconds=60)
            daemon_alive = daemon.poll() is None
            assert daemon_alive, _kill(daemon)
            assert freed, f"slot still claimed by {claimed(instance)}"
    finally:
        if launcher.poll() is None:
            _kill(launcher)
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGTERM)
            try:
                daemon.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                _kill(daemon)
