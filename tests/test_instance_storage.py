"""The SQLite event log dagster.yaml ships: Dagster's own files, rows and behaviour, batched.

A range run on `BatchedSqliteEventLogStorage` must leave exactly what Dagster's own
`SqliteEventLogStorage` leaves for the same run (events, materialized partitions, the latest
materialization of each asset, asset event tags, planned and evaluated check rows), and a batch
that fails must leave nothing behind before Dagster stores its events one by one.
"""

import datetime as dt
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.storage.event_log.schema import AssetEventTagsTable

from stocksync_dagster.defs.market.assets import market_data
from stocksync_dagster.defs.market.checks import adj_factor_checks, daily_bars_checks
from stocksync_dagster.defs.market.jobs import range_tags
from stocksync_dagster.defs.reference.assets import stock_basic, trade_calendar
from stocksync_dagster.instance_storage import BatchedSqliteEventLogStorage
from stocksync_dagster.resources import DemoSourceResource, WarehouseResource
from tests.test_market_step import check_rows

SHIPPED = Path(__file__).parents[1] / "dagster.yaml"
START, END = dt.date(2025, 3, 3), dt.date(2025, 3, 14)  # 10 trading days
PARTITIONS = 10
ASSETS = ("daily_bars", "adj_factor")
CHECKS = 13  # of both assets


def _home(root: Path, name: str, *, dagster_own: bool) -> Path:
    """An instance directory with dagster.yaml as shipped, or with Dagster's own event log."""
    home = root / name
    home.mkdir()
    config = SHIPPED.read_text()
    if dagster_own:
        config = re.sub(r"^event_log_storage:\n(?:  .*\n)+", "", config, flags=re.MULTILINE)
        assert "BatchedSqliteEventLogStorage" not in config.split("# Postgres")[1]
    (home / "dagster.yaml").write_text(config)
    return home


@pytest.fixture
def batched(monkeypatch: pytest.MonkeyPatch) -> None:
    """Events batched as definitions.py asks (the variable is read at each event)."""
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")


@pytest.fixture
def shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    """An instance from dagster.yaml as shipped, in its own DAGSTER_HOME."""
    home = _home(tmp_path, "home", dagster_own=False)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def _range_run(instance: dg.DagsterInstance, url: str) -> dg.ExecuteInProcessResult:
    resources = {"source": DemoSourceResource(stocks=12), "warehouse": WarehouseResource(url=url)}
    assert dg.materialize([trade_calendar, stock_basic], instance=instance, resources=resources)
    result = dg.materialize(
        [market_data, daily_bars_checks, adj_factor_checks],
        instance=instance,
        resources=resources,
        tags=range_tags(START.isoformat(), END.isoformat()),
        raise_on_error=False,
    )
    assert result.success
    return result


def _what_is_stored(instance: dg.DagsterInstance, run_id: str) -> dict[str, object]:
    """Everything a reader of the instance sees of the run, without ids and timestamps."""
    storage = instance.event_log_storage
    seen: dict[str, object] = {
        "events": Counter(e.dagster_event_type for e in instance.all_logs(run_id)),
        "checks": check_rows(storage, run_id),
    }
    with storage.index_connection() as connection:  # type: ignore[attr-defined]
        seen["tags"] = sorted(
            connection.execute(
                sa.select(AssetEventTagsTable.c.asset_key, AssetEventTagsTable.c.key)
            ).all()
        )
    for asset in ASSETS:
        key = dg.AssetKey(asset)
        records = instance.fetch_materializations(key, limit=100).records
        latest = instance.get_latest_materialization_event(key)
        assert latest is not None
        seen[asset] = {
            "partitions": sorted(instance.get_materialized_partitions(key)),
            "materializations": sorted(
                (r.partition_key, tuple(sorted(r.asset_materialization.metadata)))  # type: ignore[union-attr]
                for r in records
            ),
            "latest": latest.dagster_event.partition,  # type: ignore[union-attr]
            "latest_metadata": sorted(latest.asset_materialization.metadata),  # type: ignore[union-attr]
        }
    return seen


def test_the_shipped_instance_uses_the_batched_event_log_in_dagsters_files(
    shipped: dg.DagsterInstance,
) -> None:
    home = Path(shipped.root_directory)
    storage = shipped.event_log_storage
    assert isinstance(storage, BatchedSqliteEventLogStorage)
    assert Path(storage._base_dir) == home / "history" / "runs"  # Dagster's default place
    assert (home / "history" / "runs" / "index.db").is_file()


def test_its_files_are_those_of_the_instance_it_belongs_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = _home(tmp_path, "home", dagster_own=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "elsewhere"))  # not this instance's
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert Path(instance.event_log_storage._base_dir) == home / "history" / "runs"  # type: ignore[attr-defined]
    assert not (tmp_path / "elsewhere").exists()
    configured = BatchedSqliteEventLogStorage.from_config_value(
        None, {"base_dir": str(tmp_path / "events")}
    )
    assert (tmp_path / "events" / "index.db").is_file()
    configured.dispose()


def test_a_range_run_stores_exactly_what_dagsters_own_sqlite_event_log_stores(
    tmp_path: Path, batched: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    batched_types: Counter[dg.DagsterEventType] = Counter()
    store = BatchedSqliteEventLogStorage._store_asset_events

    def counted(self: BatchedSqliteEventLogStorage, events: list) -> None:
        batched_types.update(
            e.dagster_event_type
            for e in events
            if e.dagster_event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED
            or e.dagster_event.asset_key.to_user_string() in ASSETS
        )
        store(self, events)

    monkeypatch.setattr(BatchedSqliteEventLogStorage, "_store_asset_events", counted)
    seen = {}
    for name in ("ours", "dagster"):
        home = _home(tmp_path, name, dagster_own=name == "dagster")
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        with dg.DagsterInstance.from_config(str(home)) as instance:
            url = f"sqlite:///{tmp_path / name}.db"
            seen[name] = _what_is_stored(instance, _range_run(instance, url).run_id)
    # our batch path stored them: per partition and asset the planned and the done event
    assert batched_types == {
        dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED: PARTITIONS * len(ASSETS),
        dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED: CHECKS,
        dg.DagsterEventType.ASSET_MATERIALIZATION: PARTITIONS * len(ASSETS),
    }
    assert seen["ours"] == seen["dagster"]
    for asset in ASSETS:
        assert len(seen["ours"][asset]["partitions"]) == PARTITIONS  # type: ignore[index]
        assert seen["ours"][asset]["latest"] == END.isoformat()  # type: ignore[index]


def test_a_failing_batch_leaves_nothing_and_its_events_are_stored_one_by_one(
    shipped: dg.DagsterInstance, tmp_path: Path, batched: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed: list[int] = []
    original = BatchedSqliteEventLogStorage._store_asset_event_tags

    def fail_once(self: BatchedSqliteEventLogStorage, conn, events, ids) -> None:  # type: ignore[no-untyped-def]
        ours = [e for e in events if e.dagster_event.asset_key.to_user_string() in ASSETS]
        if len(ours) > 1 and not failed:  # the range run's first batch, its rows inserted
            failed.append(len(ours))
            raise sa.exc.OperationalError("INSERT", {}, Exception("disk I/O error"))
        original(self, conn, events, ids)

    monkeypatch.setattr(BatchedSqliteEventLogStorage, "_store_asset_event_tags", fail_once)
    run_id = _range_run(shipped, f"sqlite:///{tmp_path / 'w.db'}").run_id
    stored = _what_is_stored(shipped, run_id)
    assert failed == [PARTITIONS * len(ASSETS)]  # the planned events
    events: Counter = stored["events"]  # type: ignore[assignment]
    # once each: nothing of the failed batch was left behind, then each event stored alone
    assert events[dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED] == PARTITIONS * len(ASSETS)
    assert events[dg.DagsterEventType.ASSET_MATERIALIZATION] == PARTITIONS * len(ASSETS)
    planned = [r for r in stored["checks"] if r[2] == "PLANNED"]  # type: ignore[attr-defined]
    assert len(planned) == PARTITIONS * CHECKS
    for asset in ASSETS:
        assert len(stored[asset]["materializations"]) == PARTITIONS  # type: ignore[index]


def test_wipe_closes_the_held_connections_and_the_storage_works_on(
    shipped: dg.DagsterInstance, tmp_path: Path
) -> None:
    runs = Path(shipped.root_directory) / "history" / "runs"
    run_id = _range_run(shipped, f"sqlite:///{tmp_path / 'w.db'}").run_id
    assert (runs / f"{run_id}.db").is_file()
    shipped.event_log_storage.wipe()  # deletes the run files Dagster's way
    assert not (runs / f"{run_id}.db").exists()
    assert not shipped.get_materialized_partitions(dg.AssetKey("daily_bars"))
    shipped.report_runless_asset_event(dg.AssetMaterialization("daily_bars", partition="x"))
    assert shipped.get_materialized_partitions(dg.AssetKey("daily_bars")) == {"x"}


@pytest.fixture(autouse=True)
def _no_stray_homes(tmp_path: Path) -> Iterator[None]:
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)
