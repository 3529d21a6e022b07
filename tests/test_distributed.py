"""Beyond one machine: Celery workers on RabbitMQ + Postgres instance storage (docs/deployment.md).

Two `dagster-celery` workers on loopback, the instance from deploy/dagster.postgres.yaml in a
throwaway database, the workers' settings from deploy/celery/worker.yaml, a throwaway RabbitMQ
vhost (so its queues go with it). `source-1` consumes only the `source` queue and `general-1`
only `dagster`: a source step can run on `source-1` only if the executor routed it there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from stocksync_dagster.core.errors import ConfigError
from stocksync_dagster.core.settings import DEFAULT_START_DATE
from stocksync_dagster.core.sources.demo import DemoSource
from stocksync_dagster.defs.market.assets import MARKET_OP
from stocksync_dagster.defs.market.jobs import (
    RANGE_START_TAG,
    market_asset_names,
    market_status,
    range_tags,
)
from stocksync_dagster.defs.market.partitions import trading_day_partitions
from stocksync_dagster.executors import CELERY_SETTINGS, executor_from_env
from tests.conftest import IN_CI, PG_ADMIN_URL

MARKET_ASSETS = market_asset_names()

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BROKER_HOST = "127.0.0.1:5672"
STOCKS = 1500  # demo market size: big enough that a source step lasts a few seconds


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def broker_url() -> Iterator[str]:
    """A fresh RabbitMQ vhost for guest; deleting it afterwards deletes its queues."""
    if shutil.which("rabbitmqctl") is None:
        _unavailable("rabbitmqctl is not installed (RabbitMQ)")
    vhost = f"stocksync_test_{uuid.uuid4().hex[:8]}"
    try:
        _rabbitmqctl("add_vhost", vhost)
    except subprocess.CalledProcessError as exc:
        _unavailable(f"RabbitMQ is not running: {exc.stderr.decode()[-300:]}")
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"pyamqp://guest:guest@{BROKER_HOST}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def databases() -> Iterator[tuple[str, str]]:
    """Throwaway databases (instance, warehouse) on the PostgreSQL server."""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as exc:
        _unavailable(f"PostgreSQL at {PG_ADMIN_URL} is unreachable: {exc}")
    suffix = uuid.uuid4().hex[:8]
    names = (f"stocksync_instance_{suffix}", f"stocksync_warehouse_{suffix}")
    with admin.connect() as connection:
        for name in names:
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield names
    finally:
        with admin.connect() as connection:
            for name in names:
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


@dataclass
class Cluster:
    """The environment every process of the deployment shares, and its workers."""

    env: dict[str, str]
    home: Path
    warehouse_url: str
    workers: dict[str, subprocess.Popen]

    def start_worker(self, name: str, queue: str) -> None:
        log = (self.home / f"{name}.log").open("w")
        self.workers[name] = subprocess.Popen(
            [
                str(BIN / "dagster-celery"),
                "worker",
                "start",
                "-A",
                "dagster_celery.app",
                "-y",
                str(ROOT / "deploy" / "celery" / "worker.yaml"),
                "-q",
                queue,
                "-n",
                name,
                "--",
                "--concurrency",
                "1",
            ],
            cwd=self.home,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the whole worker can be killed
        )

    def wait_ready(self, name: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log(name):
                return
            assert self.workers[name].poll() is None, self.log(name)[-3000:]
            time.sleep(0.5)
        pytest.fail(f"worker {name} not ready after {timeout}s:\n{self.log(name)[-3000:]}")

    def log(self, name: str) -> str:
        return (self.home / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal the worker's whole process group (CLI, celery main process, pool child)."""
        process = self.workers[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        process.wait(timeout=30)

    def materialize(self, start: str, end: str) -> subprocess.Popen:
        config = self.home / "run_config.yaml"
        config.write_text(yaml.safe_dump({"resources": {"source": {"config": {"stocks": STOCKS}}}}))
        return subprocess.Popen(
            [
                str(BIN / "dagster"),
                "job",
                "execute",
                "-m",
                "stocksync_dagster.definitions",
                "-j",
                "market_sync",
                "--tags",
                json.dumps(range_tags(start, end)),
                "-c",
                str(config),
            ],
            cwd=self.home,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )


@pytest.fixture
def cluster(
    tmp_path: Path, broker_url: str, databases: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Cluster]:
    instance_db, warehouse_db = databases
    admin = sa.make_url(PG_ADMIN_URL)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.postgres.yaml", home / "dagster.yaml")
    warehouse_url = admin.set(database=warehouse_db).render_as_string(hide_password=False)
    shared = {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_USER": admin.username or "postgres",
        "DAGSTER_PG_PASSWORD": admin.password or "",
        "DAGSTER_PG_HOST": admin.host or "127.0.0.1",
        "DAGSTER_PG_PORT": str(admin.port or 5432),
        "DAGSTER_PG_DB": instance_db,
        "STOCKSYNC_SOURCE": "demo",
        "STOCKSYNC_DATABASE_URL": warehouse_url,
        "STOCKSYNC_EXECUTOR": "celery",
        "STOCKSYNC_CELERY_BROKER": broker_url,
        "STOCKSYNC_CELERY_BACKEND": "rpc://",
    }
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STOCKSYNC_", "TUSHARE", "BAOSTOCK", "DAGSTER_"))
    }
    # dagster-celery starts `celery` by name
    env.update(shared, PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    for key, value in shared.items():
        monkeypatch.setenv(key, value)  # for DagsterInstance.get() in the test process
    result = Cluster(env=env, home=home, warehouse_url=warehouse_url, workers={})
    try:
        yield result
    finally:
        for name, process in result.workers.items():
            if process.poll() is None:
                result.kill(name, signal.SIGTERM)


def _engine_events(instance: dg.DagsterInstance, run_id: str, step: str) -> list[dict[str, str]]:
    """Metadata of the "Executing steps ... in celery worker" events of one step."""
    found = []
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = record.dagster_event
        metadata = event.engine_event_data.metadata if event else {}
        if record.step_key == step and "Celery worker" in metadata:
            found.append({k: v.value for k, v in metadata.items()})
    return found


def _count(instance: dg.DagsterInstance, run_id: str, step: str, kind: dg.DagsterEventType) -> int:
    return sum(1 for r in instance.all_logs(run_id, of_type=kind) if r.step_key == step)


def _assert_complete(cluster: Cluster, start: str, end: str) -> dg.DagsterRun:
    """The run succeeded; the warehouse has every demo row of the range; partitions are green."""
    instance = dg.DagsterInstance.get()
    runs = instance.get_runs(dg.RunsFilter(tags={RANGE_START_TAG: start}))
    assert len(runs) == 1
    run = runs[0]
    assert run.status == dg.DagsterRunStatus.SUCCESS
    expected = (
        DemoSource(n_stocks=STOCKS)
        .daily_bars(dt.date.fromisoformat(start), dt.date.fromisoformat(end))
        .frame
    )
    engine = sa.create_engine(cluster.warehouse_url)
    between = f"trade_date BETWEEN '{start}' AND '{end}'"
    with engine.connect() as connection:
        bars = connection.exec_driver_sql(f"SELECT count(*) FROM daily_bar WHERE {between}")
        factors = connection.exec_driver_sql(f"SELECT count(*) FROM adj_factor WHERE {between}")
        assert bars.scalar() == factors.scalar() == len(expected) > 0
    engine.dispose()
    partitions = trading_day_partitions(DEFAULT_START_DATE)
    keys = partitions.get_partition_keys_in_range(dg.PartitionKeyRange(start, end))
    statuses = market_status(instance, partitions, keys)
    for asset in MARKET_ASSETS:
        assert set(statuses[asset].values()) == {dg.AssetPartitionStatus.MATERIALIZED}, asset
        assert set(statuses[asset]) == set(keys)
    return run


def _finish(process: subprocess.Popen, timeout: float = 150) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"run did not finish in {timeout}s:\n{output[-4000:]}")
    assert process.returncode == 0, output[-4000:]
    return output


CELERY_ENV = {
    "STOCKSYNC_EXECUTOR": "celery",
    "STOCKSYNC_CELERY_BROKER": "pyamqp://user:hunter2@rabbitmq:5672//",
    "STOCKSYNC_CELERY_BACKEND": "rpc://",
}


@pytest.mark.parametrize(
    ("env", "variable", "problem"),
    [
        ({"STOCKSYNC_EXECUTOR": "spark"}, "STOCKSYNC_EXECUTOR", "unknown executor"),
        ({"STOCKSYNC_EXECUTOR": "celery"}, "STOCKSYNC_CELERY_BROKER", "not set"),
        (
            {**CELERY_ENV, "STOCKSYNC_CELERY_BROKER": "kafka://user:hunter2@k:9092"},
            "STOCKSYNC_CELERY_BROKER",
            "unsupported URL",
        ),
        ({**CELERY_ENV, "STOCKSYNC_CELERY_BACKEND": ""}, "STOCKSYNC_CELERY_BACKEND", "not set"),
        (
            {**CELERY_ENV, "STOCKSYNC_CELERY_BACKEND": "db+postgresql://u:hunter2@h/db"},
            "STOCKSYNC_CELERY_BACKEND",
            "unsupported URL",
        ),
    ],
)
def test_bad_executor_settings_name_the_variable(
    env: dict[str, str], variable: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        executor_from_env(env)
    assert str(raised.value).startswith(f"{variable}: {problem}")
    assert "hunter2" not in str(raised.value)


def test_celery_executor_from_valid_settings() -> None:
    executor = executor_from_env(CELERY_ENV)
    assert executor is not None and executor.name == "celery"


def test_worker_settings_match_the_executor() -> None:
    worker = yaml.safe_load((ROOT / "deploy" / "celery" / "worker.yaml").read_text())
    config = worker["execution"]["config"]
    assert config["config_source"] == dict(CELERY_SETTINGS)
    assert config["broker"] == {"env": "STOCKSYNC_CELERY_BROKER"}
    assert config["backend"] == {"env": "STOCKSYNC_CELERY_BACKEND"}
    assert executor_from_env({}) is dg.in_process_executor  # one machine: one process per run
    assert executor_from_env({"STOCKSYNC_EXECUTOR": "multiprocess"}) is None  # Dagster's own


@pytest.mark.slow
@pytest.mark.postgres
def test_celery_backfill_survives_a_killed_worker(cluster: Cluster) -> None:
    cluster.start_worker("source-1", "source")
    cluster.start_worker("general-1", "dagster")
    cluster.wait_ready("source-1")
    cluster.wait_ready("general-1")
    hostname = {name: f"{name}@{os.uname().nodename}" for name in cluster.workers}

    # 1. A range backfill through Celery: source steps on the `source` queue, checks elsewhere.
    output = _finish(cluster.materialize("2025-08-04", "2025-08-15"))
    assert "guest:guest" not in output  # no broker password in the run's logs
    run = _assert_complete(cluster, "2025-08-04", "2025-08-15")
    instance = dg.DagsterInstance.get()
    # one step fetches both market assets (one source session)
    ran_on = [e["Celery worker"] for e in _engine_events(instance, run.run_id, MARKET_OP)]
    assert ran_on == [hostname["source-1"]]
    checks = _engine_events(instance, run.run_id, "daily_bars_checks")
    assert [e["Celery worker"] for e in checks] == [hostname["general-1"]]

    # 2. SIGKILL the source worker in the middle of a step. Its task was not acknowledged
    # (acks_late), so RabbitMQ hands it to the next consumer of `source`: general-1, told to
    # join the queue just before. The step runs again there and the run still succeeds.
    start, end = "2025-06-03", "2025-07-31"
    process = cluster.materialize(start, end)
    run_id, victim_step = None, None
    deadline = time.monotonic() + 120
    while victim_step is None and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
        runs = instance.get_runs(dg.RunsFilter(tags={RANGE_START_TAG: start}))
        if not runs:
            continue
        run_id = runs[0].run_id
        for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START):
            victim_step = record.step_key
    if victim_step is None:
        process.kill()
        pytest.fail(f"no source step started:\n{process.communicate()[0][-4000:]}")
    replies = _celery_control(cluster).add_consumer(
        "source", destination=[hostname["general-1"]], reply=True
    )
    assert replies, "general-1 did not join the source queue"
    cluster.kill("source-1")
    assert _count(instance, run_id, victim_step, dg.DagsterEventType.STEP_SUCCESS) == 0, (
        "the step finished before its worker was killed: make it longer (STOCKS)"
    )
    _finish(process)
    _assert_complete(cluster, start, end)
    ran_on = [e["Celery worker"] for e in _engine_events(instance, run_id, victim_step)]
    assert ran_on == [hostname["source-1"], hostname["general-1"]]
    assert _count(instance, run_id, victim_step, dg.DagsterEventType.STEP_START) == 2
    assert _count(instance, run_id, victim_step, dg.DagsterEventType.STEP_SUCCESS) == 1


def _celery_control(cluster: Cluster) -> Any:
    from celery import Celery

    return Celery(broker=cluster.env["STOCKSYNC_CELERY_BROKER"]).control
