"""Dagster instance storage: event logs that store a range run's events at a fraction of the cost.

A range run stores a few events per partition (planned and done materializations, planned check
rows). Dagster's storages write each event on its own connection and in its own transaction;
this module keeps the storages Dagster's own and changes only how they reach the database.

`BatchedSqliteEventLogStorage` (dagster.yaml as shipped; the files are Dagster's, under
`$DAGSTER_HOME/history/runs`): Dagster's `SqliteEventLogStorage` builds a new SQLAlchemy engine,
opens and closes a connection (the last close of a WAL database checkpoints it) and commits for
every statement, and writes a batch of events (`DAGSTER_EVENT_BATCH_SIZE`, which definitions.py
sets) one event at a time. Here each database file keeps one engine and one open connection per
process, and a batch is stored in one transaction per file: the same statements, the same rows.
If a batch fails it is rolled back whole, and Dagster stores its events one by one (as it does
for any storage whose batch write fails).

`PooledPostgresEventLogStorage` (deploy/dagster.postgres.yaml, the production setting):
dagster-postgres opens a new connection for every statement (SQLAlchemy `NullPool`) unless the
process is the webserver, which calls `optimize_for_webserver` to hold one. This is
dagster-postgres's own storage, pooled the way the webserver pools it, in every process that
uses it (daemon, run workers, CLI). It also stores a range run's planned events (one per
partition and asset, one per check) the way dagster-postgres stores a batch of
materializations (one multi-row insert, each asset's row once), where dagster-postgres stores
them one by one.

Both store a check's planned event of a range run without re-serializing it per partition.
Dagster gives every check planned in a partitioned run the run's partition subset (unpartitioned
checks too) and writes one `asset_check_executions` row per partition, each with the whole event
serialized again, partitions definition included: for 11 checks x 1,000 partitions x a
definition listing every holiday since the history starts, that was most of a range run's
bookkeeping. The rows are the same; the event is serialized once (on Postgres also sent once per
check: `INSERT ... SELECT ... FROM unnest(<partition keys>)`).

These override private methods of dagster 1.13.27 and dagster-postgres 0.29.27 (pinned);
tests/test_market_step.py and tests/test_instance_storage.py compare what they store with what
Dagster's own storages store for the same runs.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import dagster as dg
import sqlalchemy as sa
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster_postgres import PostgresEventLogStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

POOL_RECYCLE_SECONDS = 3600
"""A held connection is replaced after an hour (as the webserver's)."""
MAX_OVERFLOW = 10
"""Connections beyond the one held, for threads of the same process (closed when returned)."""
PLANNED = "PLANNED"  # AssetCheckExecutionRecordStatus.PLANNED
SQLITE_BUSY_TIMEOUT_SECONDS = 30
"""How long a write waits for another process's transaction on the same file (as Dagster's)."""
MAX_OPEN_SQLITE_FILES = 32
"""Database files with an open connection per process (the index and the most recent runs)."""

# Dagster's `asset_check_executions` rows of one planned check: one per partition key, the
# event text bound once.
_PLANNED_ROWS = sa.text(
    "INSERT INTO asset_check_executions (asset_key, check_name, partition, run_id, "
    "execution_status, evaluation_event, evaluation_event_timestamp, evaluation_event_storage_id) "
    "SELECT :asset_key, :check_name, partition_key, :run_id, :execution_status, :evaluation_event, "
    "CAST(:evaluation_event_timestamp AS TIMESTAMP), CAST(:evaluation_event_storage_id AS BIGINT) "
    "FROM unnest(CAST(:partition_keys AS TEXT[])) AS partition_key"
)


# The same rows on SQLite, one parameter set per partition key (the event text shared).
_SQLITE_PLANNED_ROW = sa.text(
    "INSERT INTO asset_check_executions (asset_key, check_name, partition, run_id, "
    "execution_status, evaluation_event, evaluation_event_timestamp, evaluation_event_storage_id) "
    "VALUES (:asset_key, :check_name, :partition, :run_id, :execution_status, :evaluation_event, "
    ":evaluation_event_timestamp, :evaluation_event_storage_id)"
).bindparams(sa.bindparam("evaluation_event_timestamp", type_=sa.DateTime))


def _planned_check_row(
    storage: Any, event: dg.EventLogEntry, event_id: int | None
) -> tuple[dict[str, Any], list[str | None]]:
    """The columns every row of a planned check shares (event serialized once), and its keys."""
    planned: Any = event.get_dagster_event().event_specific_data  # AssetCheckEvaluationPlanned
    subset = planned.partitions_subset
    keys: list[str | None] = list(subset.get_partition_keys()) if subset else [None]
    row = {
        "asset_key": planned.asset_key.to_string(),
        "check_name": planned.check_name,
        "run_id": event.run_id,
        "execution_status": PLANNED,
        "evaluation_event": dg.serialize_value(event),
        "evaluation_event_timestamp": storage._event_insert_timestamp(event),
        "evaluation_event_storage_id": event_id,
    }
    return row, keys


_HOLDING_CONNECTIONS: weakref.WeakSet[BatchedSqliteEventLogStorage] = weakref.WeakSet()


@atexit.register
def _close_held_connections() -> None:
    """Close the files cleanly at exit (SQLite checkpoints a WAL file when its last one closes)."""
    for storage in list(_HOLDING_CONNECTIONS):
        storage._dispose_engines()


_BATCHED_TYPES = frozenset(
    {
        dg.DagsterEventType.ASSET_MATERIALIZATION,
        dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
        dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED,
    }
)
"""What a range run stores per partition: stored here as a batch (Dagster: one by one)."""
_CHECK_PLANNED = dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED


def _batchable(events: Sequence[dg.EventLogEntry]) -> bool:
    return bool(events) and all(
        e.dagster_event is not None
        and e.dagster_event.event_type in _BATCHED_TYPES
        and (e.dagster_event.event_type == _CHECK_PLANNED or e.dagster_event.asset_key)
        for e in events
    )


def _store_asset_rows(
    storage: Any, conn: sa.Connection, events: Sequence[dg.EventLogEntry], ids: Sequence[int]
) -> None:
    """The index rows of a batch's asset events: their tags, and each asset's row updated once,
    with its last event (as dagster-postgres does for a batch of materializations)."""
    assets = [(e, i) for e, i in zip(events, ids, strict=True) if not _is_check(e)]
    storage._store_asset_event_tags(conn, [e for e, _ in assets], [i for _, i in assets])
    latest = {e.get_dagster_event().asset_key: (e, i) for e, i in assets}
    for event, event_id in latest.values():
        storage._store_asset_event(conn, event, event_id)


def _store_planned_checks(
    storage: Any, events: Sequence[dg.EventLogEntry], ids: Sequence[int]
) -> None:
    for event, event_id in zip(events, ids, strict=True):
        if _is_check(event):
            storage.store_asset_check_event(event, event_id)


def _is_materialization(event: dg.EventLogEntry) -> bool:
    return event.get_dagster_event().event_type == dg.DagsterEventType.ASSET_MATERIALIZATION


def _is_check(event: dg.EventLogEntry) -> bool:
    return event.get_dagster_event().event_type == _CHECK_PLANNED


def _inserted_id(result: sa.CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    if key is None or key[0] is None:
        raise dg.DagsterInvariantViolationError("Cannot store asset event tags for null event id.")
    return int(key[0])


class BatchedSqliteEventLogStorage(SqliteEventLogStorage):
    """Dagster's SQLite event log: one held connection per file, a batch in one transaction.

    Config: `base_dir`; unset, Dagster's default place, `history/runs` in the instance's
    directory (`$DAGSTER_HOME`, or the directory given to `DagsterInstance.from_config`)."""

    def __init__(self, base_dir: str, inst_data: dg.ConfigurableClassData | None = None) -> None:
        self._engines: OrderedDict[str, sa.Engine] = OrderedDict()
        self._engines_pid = os.getpid()
        self._batch = threading.local()
        self._tables: set[str] = set()
        super().__init__(base_dir, inst_data)

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {"base_dir": dg.Field(dg.StringSource, is_required=False)}

    @classmethod
    def from_config_value(
        cls, inst_data: dg.ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> BatchedSqliteEventLogStorage:
        if config_value.get("base_dir"):
            return cls(config_value["base_dir"], inst_data=inst_data)
        # Dagster's default place, known once the instance registers (its root directory)
        storage = cls.__new__(cls)
        storage._inst_data = inst_data
        return storage

    def register_instance(self, instance: dg.DagsterInstance) -> None:
        if not hasattr(self, "_base_dir"):
            root = instance.root_directory
            self.__init__(os.path.join(root, "history", "runs"), self._inst_data)  # type: ignore[misc]
        super().register_instance(instance)

    def _engine(self, shard: str) -> sa.Engine:
        """The file's engine, holding one connection (created, and the file set up, once)."""
        if self._engines_pid != os.getpid():  # forked: the parent's connections are not ours
            self._engines = OrderedDict()
            self._engines_pid = os.getpid()
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        engine = sa.create_engine(
            self.conn_string_for_shard(shard),
            poolclass=sa.pool.StaticPool,
            # Used by one thread at a time (`_db_lock`), not always the one that opened it.
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
        )
        if shard not in self._initialized_dbs:
            self._initdb(engine)
            self._initialized_dbs.add(shard)
        self._engines[shard] = engine
        _HOLDING_CONNECTIONS.add(self)
        while len(self._engines) > MAX_OPEN_SQLITE_FILES:
            self._engines.popitem(last=False)[1].dispose()
        return engine

    @contextlib.contextmanager
    def _connect(self, shard: str) -> Iterator[sa.Connection]:
        batch: dict[str, sa.Connection] | None = getattr(self._batch, "connections", None)
        if batch is None:
            with self._db_lock, self._engine(shard).connect() as conn, conn.begin():
                yield conn
            return
        # Inside store_event_batch (which holds `_db_lock`): the file's transaction of the batch.
        if shard not in batch:
            batch[shard] = self._engine(shard).connect()
            batch[shard].begin()
        yield batch[shard]

    def store_event_batch(self, events: Sequence[dg.EventLogEntry]) -> None:
        """In one transaction per file, committed at the end: a range run's materializations
        and planned events as a batch (`_store_asset_events`), other events one by one as
        Dagster does."""
        with self._db_lock:
            connections: dict[str, sa.Connection] = {}
            self._batch.connections = connections
            try:
                if _batchable(events):
                    self._store_asset_events(events)
                else:
                    super().store_event_batch(events)
                for conn in connections.values():
                    conn.commit()
            finally:
                self._batch.connections = None
                for conn in connections.values():
                    conn.close()  # rolls back what was not committed

    def _store_asset_events(self, events: Sequence[dg.EventLogEntry]) -> None:
        """Dagster's `store_event` for each event (its insert statement, built once, in the
        run's file and the index), except that each asset's row is updated once, with its
        last event of the batch."""
        inserts = [self.prepare_insert_event(event) for event in events]  # Dagster's statement
        for event, insert in zip(events, inserts, strict=True):
            with self.run_connection(event.run_id) as conn:
                conn.execute(insert)
        with self.index_connection() as conn:
            ids = [_inserted_id(conn.execute(insert)) for insert in inserts]
            _store_asset_rows(self, conn, events, ids)
        _store_planned_checks(self, events, ids)

    def has_table(self, table_name: str) -> bool:
        """Dagster's (a new engine each call, once per asset event), remembered once true."""
        if table_name not in self._tables and super().has_table(table_name):
            self._tables.add(table_name)
        return table_name in self._tables

    def _store_asset_check_evaluation_planned(
        self, event: dg.EventLogEntry, event_id: int | None
    ) -> None:
        """As dagster's, one row per partition, with the event serialized once."""
        row, keys = _planned_check_row(self, event, event_id)
        with self.index_connection() as connection:
            connection.execute(_SQLITE_PLANNED_ROW, [{**row, "partition": key} for key in keys])

    def _dispose_engines(self) -> None:
        with self._db_lock:
            engines, self._engines = list(self._engines.values()), OrderedDict()
        for engine in engines:
            engine.dispose()

    def wipe(self) -> None:
        self._dispose_engines()  # before Dagster deletes the run files
        super().wipe()

    def dispose(self) -> None:
        self._dispose_engines()
        super().dispose()


class PooledPostgresEventLogStorage(PostgresEventLogStorage):
    """`PostgresEventLogStorage` holding a pooled connection per process (no statement timeout)."""

    @classmethod
    def from_config_value(
        cls, inst_data: Any, config_value: Mapping[str, Any]
    ) -> PooledPostgresEventLogStorage:
        storage = cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )
        storage.optimize_for_webserver(
            statement_timeout=0, pool_recycle=POOL_RECYCLE_SECONDS, max_overflow=MAX_OVERFLOW
        )
        return storage

    def store_event_batch(self, events: Sequence[dg.EventLogEntry]) -> None:
        """A range run's planned events as dagster-postgres stores a batch of materializations;
        every other batch as dagster-postgres does."""
        if _batchable(events) and not any(_is_materialization(e) for e in events):
            self._store_planned_events(events)
        else:
            super().store_event_batch(events)

    def _store_planned_events(self, events: Sequence[dg.EventLogEntry]) -> None:
        """One multi-row INSERT of the events (Dagster's statement), the asset event tags, each
        asset's row once with its last event, then each planned check's rows. (Dagster stores
        them one by one: an insert, a NOTIFY nobody listens to and a transaction per event.)"""
        insert = self.prepare_insert_event_batch(events)
        with self._connect() as conn:
            ids = [int(row[0]) for row in conn.execute(insert.returning(insert.table.c.id))]
        if len(ids) != len(events):
            raise dg.DagsterInvariantViolationError("Cannot store asset event tags for null ids.")
        with self.index_transaction() as conn:
            _store_asset_rows(self, conn, events, ids)
        _store_planned_checks(self, events, ids)

    def _store_asset_check_evaluation_planned(
        self, event: dg.EventLogEntry, event_id: int | None
    ) -> None:
        """As dagster's, one row per partition, with the event serialized and sent once."""
        row, keys = _planned_check_row(self, event, event_id)
        with self.index_connection() as connection:
            connection.execute(_PLANNED_ROWS, {**row, "partition_keys": keys})
