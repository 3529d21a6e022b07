"""daily_bars and adj_factor are one step: both from one source session, or either alone.

The source calls are counted where they arrive: at the loopback baostock server, through the
real baostock client. Backfills are bounded: runs of at most MAX_PARTITIONS_PER_RUN partitions.
"""

import datetime as dt
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable

from stocksync_dagster.cli.backfill import partition_chunks
from stocksync_dagster.core.sources.demo_market import DemoMarket
from stocksync_dagster.core.warehouse import Warehouse
from stocksync_dagster.defs.market.assets import MARKET_OP, market_data
from stocksync_dagster.defs.market.checks import adj_factor_checks, daily_bars_checks
from stocksync_dagster.defs.market.jobs import range_tags
from stocksync_dagster.defs.policies import MAX_PARTITIONS_PER_RUN
from stocksync_dagster.defs.reference.assets import stock_basic, trade_calendar
from stocksync_dagster.resources import (
    BaostockSourceResource,
    DemoSourceResource,
    WarehouseResource,
)
from tests.fakes.baostock_server import FakeBaostockServer
from tests.support import materializations

ORIGIN = dt.date(2025, 1, 2)
START, END = dt.date(2025, 3, 3), dt.date(2025, 3, 14)
AS_OF = dt.date(2025, 4, 30)
WORKERS = 2
BARS_CALL, FACTORS_CALL = "query_history_k_data_plus", "query_adjust_factor"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeBaostockServer]:
    with FakeBaostockServer(DemoMarket(30, seed=5, origin=ORIGIN), as_of=AS_OF) as server:
        yield server


def baostock(server: FakeBaostockServer) -> BaostockSourceResource:
    return BaostockSourceResource(
        server=server.address, workers=WORKERS, call_timeout_seconds=5.0, backoff_seconds=0.05
    )


def materialize(
    source: dg.ConfigurableResource, url: str, assets: list[str]
) -> dg.ExecuteInProcessResult:
    with dg.instance_for_test() as instance:
        return dg.materialize(
            [market_data],
            selection=assets,
            instance=instance,
            resources={"source": source, "warehouse": WarehouseResource(url=url)},
            tags=range_tags(START.isoformat(), END.isoformat()),
        )


def stored(url: str, table: str) -> int:
    with Warehouse(url).connect() as connection:
        return connection.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()


def per_stock(server: FakeBaostockServer, method: str) -> Counter[str]:
    return Counter({code: n for (m, code), n in server.stock_requests.items() if m == method})


def test_both_assets_come_from_one_session_with_one_call_per_stock_and_dataset(
    server: FakeBaostockServer, sqlite_url: str
) -> None:
    server.stock_requests.clear()
    logins = server.logins
    result = materialize(baostock(server), sqlite_url, ["daily_bars", "adj_factor"])
    assert result.success
    steps = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    assert steps == {MARKET_OP}
    bars, factors = per_stock(server, BARS_CALL), per_stock(server, FACTORS_CALL)
    # Every stock of the range: one bar call and one factor call for the whole range (the
    # factors reuse the traded days the bars fetched), 2 calls per stock in all.
    assert len(bars) >= 20 and set(bars) == set(factors)
    assert set(bars.values()) == {1} and set(factors.values()) == {1}
    assert server.logins - logins == WORKERS  # one session: each worker logged in once
    keys = sorted({m.partition for m in materializations(result, "daily_bars")})
    assert keys == sorted({m.partition for m in materializations(result, "adj_factor")})
    assert len(keys) == 10 and stored(sqlite_url, "daily_bar") == stored(sqlite_url, "adj_factor")


def test_selecting_only_adj_factor_fetches_and_materializes_only_it(
    server: FakeBaostockServer, sqlite_url: str
) -> None:
    server.stock_requests.clear()
    result = materialize(baostock(server), sqlite_url, ["adj_factor"])
    assert result.success
    assert materializations(result, "daily_bars") == []
    assert len(materializations(result, "adj_factor")) == 10
    assert stored(sqlite_url, "daily_bar") == 0 and stored(sqlite_url, "adj_factor") > 0
    # Alone, the factors need each stock's traded days: a days-only k-data call per stock.
    assert set(per_stock(server, FACTORS_CALL).values()) == {1}
    assert set(per_stock(server, BARS_CALL).values()) == {1}


def test_selecting_only_daily_bars_leaves_adj_factor_alone(sqlite_url: str) -> None:
    result = materialize(DemoSourceResource(stocks=20), sqlite_url, ["daily_bars"])
    assert result.success
    assert len(materializations(result, "daily_bars")) == 10
    assert materializations(result, "adj_factor") == []
    assert stored(sqlite_url, "adj_factor") == 0 and stored(sqlite_url, "daily_bar") > 0


def test_backfills_run_in_runs_of_at_most_max_partitions() -> None:
    policy = market_data.backfill_policy
    assert policy is not None and policy.max_partitions_per_run == MAX_PARTITIONS_PER_RUN
    keys = [f"k{i}" for i in range(7)]
    assert partition_chunks(keys, 3) == [["k0", "k1", "k2"], ["k3", "k4", "k5"], ["k6"]]
    assert partition_chunks(keys, 250) == [keys]


@pytest.mark.slow
def test_cli_backfill_longer_than_the_bound_is_several_named_runs(tmp_path: Path) -> None:
    # The bound lowered to 2 partitions in the CLI's own process: 5 days are 3 runs.
    script = (
        "import stocksync_dagster.defs.policies as p; p.MAX_PARTITIONS_PER_RUN = 2; "
        "from stocksync_dagster.cli.main import cli; "
        "cli(['backfill', '2025-08-04', '2025-08-08'])"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCKSYNC_", "DAGSTER_"))}
    env.update(STOCKSYNC_SOURCE="demo", STOCKSYNC_START_DATE="2025-08-01")
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run 1/3: 2025-08-04..2025-08-05 (2 trading days)" in done.stdout
    assert "run 3/3: 2025-08-08..2025-08-08 (1 trading day)" in done.stdout
    with dg.DagsterInstance.from_config(str(tmp_path / ".stocksync" / "dagster")) as instance:
        runs = sorted(
            instance.get_runs(), key=lambda r: r.tags["dagster/asset_partition_range_start"]
        )
        assert [r.job_name for r in runs] == ["market_sync"] * 3
        assert [
            (
                r.tags["dagster/asset_partition_range_start"],
                r.tags["dagster/asset_partition_range_end"],
            )
            for r in runs
        ] == [
            ("2025-08-04", "2025-08-05"),
            ("2025-08-06", "2025-08-07"),
            ("2025-08-08", "2025-08-08"),
        ]
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)


@pytest.fixture
def instance_database_url(postgres_server_url: str) -> Iterator[str]:
    """A database of its own for a Dagster instance: Dagster's storage keeps its own Alembic
    version table, which must not meet the warehouse's (the session database's)."""
    import uuid

    import sqlalchemy as sa

    server = sa.make_url(postgres_server_url)
    name = f"stocksync_instance_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


@pytest.mark.postgres
def test_production_instance_pools_the_event_log_and_records_each_partition(
    instance_database_url: str, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import sqlalchemy as sa

    url = sa.make_url(instance_database_url)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(Path(__file__).parents[1] / "deploy" / "dagster.postgres.yaml", home)
    (home / "dagster.postgres.yaml").rename(home / "dagster.yaml")
    for variable, value in {
        "DAGSTER_PG_USER": url.username or "postgres",
        "DAGSTER_PG_PASSWORD": url.password or "",
        "DAGSTER_PG_HOST": url.host or "127.0.0.1",
        "DAGSTER_PG_DB": url.database or "",
        "DAGSTER_PG_PORT": str(url.port or 5432),
    }.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")  # as definitions.py sets it
    from stocksync_dagster.instance_storage import PooledPostgresEventLogStorage

    batched: list[int] = []
    store_planned = PooledPostgresEventLogStorage._store_planned_events

    def counted(self: PooledPostgresEventLogStorage, events: list) -> None:
        batched.append(len(events))
        store_planned(self, events)

    monkeypatch.setattr(PooledPostgresEventLogStorage, "_store_planned_events", counted)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        assert type(storage).__name__ == "PooledPostgresEventLogStorage"
        with storage._connect() as connection:  # type: ignore[attr-defined]
            assert connection.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
            assert connection.exec_driver_sql("SHOW default_toast_compression").scalar() == "lz4"
        resources = {
            "source": DemoSourceResource(stocks=20),
            "warehouse": WarehouseResource(url=sqlite_url),
        }
        assert dg.materialize(
            [trade_calendar, stock_basic], instance=instance, resources=resources
        ).success
        result = dg.materialize(
            [market_data, daily_bars_checks, adj_factor_checks],
            instance=instance,
            resources=resources,
            tags=range_tags(START.isoformat(), END.isoformat()),
        )
        assert result.success
        for asset in ("daily_bars", "adj_factor"):
            assert len(instance.get_materialized_partitions(dg.AssetKey(asset))) == 10
            record = instance.get_asset_records([dg.AssetKey(asset)])[0].asset_entry
            assert record.last_run_id == result.run_id  # set by the batch of planned events
        our_events = Counter(e.dagster_event_type for e in instance.all_logs(result.run_id))
        del our_events[None]  # log lines (the first run also creates the warehouse schema)
        # The checks' rows are exactly those of dagster-postgres's own storage for the same run
        # (one planned row per partition and check, then the evaluations), on the same database.
        ours = check_rows(storage, result.run_id)
        our_rows = event_rows(storage, result.run_id)
        our_tags = tag_rows(storage, result.run_id)
        stock_home = tmp_path / "stock"
        stock_home.mkdir()
        pg_url = url.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
        stock_config = f"storage:\n  postgres:\n    postgres_url: {pg_url}\n"
        (stock_home / "dagster.yaml").write_text(stock_config)
        with dg.DagsterInstance.from_config(str(stock_home)) as stock:
            again = dg.materialize(
                [market_data, daily_bars_checks, adj_factor_checks],
                instance=stock,
                resources=resources,
                tags=range_tags(START.isoformat(), END.isoformat()),
            )
            theirs = check_rows(stock.event_log_storage, again.run_id)
            their_events = Counter(e.dagster_event_type for e in stock.all_logs(again.run_id))
            their_rows = event_rows(stock.event_log_storage, again.run_id)
            their_tags = tag_rows(stock.event_log_storage, again.run_id)
            del their_events[None]
    assert ours == theirs
    assert our_events == their_events
    # Every event row in the same order, its columns matching its event, and every asset
    # event tag on the event it belongs to (the batch's ids came back in the batch's order).
    assert our_rows == their_rows
    assert our_tags == their_tags
    assert len(our_tags) >= 2 * 10  # each materialization has its data version tag
    assert our_events[dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED] == 2 * 10
    assert 2 * 10 + 13 in batched  # the range run's planned events went in one batch
    planned = [r for r in ours if r[2] == "PLANNED"]
    assert len(planned) == 10 * 13  # 13 checks, 10 partitions


def event_rows(storage: object, run_id: str) -> list[tuple]:
    """The run's Dagster events in id order: (type, asset, partition, step), each checked
    against the serialized event it stores."""
    import sqlalchemy as sa
    from dagster._serdes import deserialize_value

    with storage.index_connection() as connection:  # type: ignore[attr-defined]
        rows = connection.execute(
            sa.text(
                "SELECT dagster_event_type, asset_key, partition, step_key, event FROM event_logs "
                "WHERE run_id = :run_id AND dagster_event_type IS NOT NULL ORDER BY id"
            ),
            {"run_id": run_id},
        ).all()
    out = []
    for kind, asset, partition, step, text in rows:
        event = deserialize_value(text).get_dagster_event()
        assert (event.event_type_value, event.partition) == (kind, partition)
        assert (event.asset_key.to_string() if event.asset_key else None) == asset
        out.append((kind, asset, partition, step))
    return out


def tag_rows(storage: object, run_id: str) -> list[tuple]:
    """The run's asset event tags: (type, partition) of the event each points to, and its key."""
    import sqlalchemy as sa

    with storage.index_connection() as connection:  # type: ignore[attr-defined]
        rows = connection.execute(
            sa.text(
                "SELECT e.dagster_event_type, e.partition, t.key, t.value FROM asset_event_tags t "
                "JOIN event_logs e ON e.id = t.event_id WHERE e.run_id = :run_id "
                "AND t.asset_key = e.asset_key"
            ),
            {"run_id": run_id},
        ).all()
        assert (
            len(rows)
            == connection.execute(
                sa.text(
                    "SELECT count(*) FROM asset_event_tags WHERE event_id IN "
                    "(SELECT id FROM event_logs WHERE run_id = :run_id)"
                ),
                {"run_id": run_id},
            ).scalar()
        )
    return sorted((kind, partition, key) for kind, partition, key, _ in rows)


def check_rows(storage: object, run_id: str) -> list[tuple]:
    """(check, partition, status, event type) of the run's `asset_check_executions` rows."""
    import sqlalchemy as sa
    from dagster._serdes import deserialize_value

    table = AssetCheckExecutionsTable
    with storage.index_connection() as connection:  # type: ignore[attr-defined]
        rows = connection.execute(
            sa.select(
                table.c.check_name,
                table.c.partition,
                table.c.execution_status,
                table.c.evaluation_event,
            ).where(table.c.run_id == run_id)
        ).all()
    return sorted(
        (r[0], r[1] or "", r[2], deserialize_value(r[3]).get_dagster_event().event_type_value)
        for r in rows
    )
