"""Dagster instance storage: the production event log, storing a range run's events in batches.

`PooledPostgresEventLogStorage` (deploy/dagster.postgres.yaml, the production setting) is
dagster-postgres's own storage with three changes to how it reaches the database:

- It holds a pooled connection per process. dagster-postgres opens a new connection for every
  statement (SQLAlchemy `NullPool`) unless the process is the webserver, which calls
  `optimize_for_webserver` to hold one; here every process does (daemon, run workers, CLI).
- A range run's planned events (one per partition and asset, one per check) are stored the way
  dagster-postgres stores a batch of materializations: one multi-row insert of the events,
  each asset's row once, with its last event. dagster-postgres stores them one by one (an
  insert, a NOTIFY nobody listens to and a transaction per event).
- A check's planned rows are written without re-serializing the event per partition. Dagster
  gives every check planned in a partitioned run the run's partition subset and writes one
  `asset_check_executions` row per partition, each with the whole event serialized again,
  partitions definition included. The rows are the same; the event is serialized and sent
  once per check (`INSERT ... SELECT ... FROM unnest(<partition keys>)`).
- A batch of events is inserted from arrays (`INSERT ... SELECT ... FROM unnest(...)`), one
  statement whatever the batch's length, compiled once per process; Dagster's multi-row
  `VALUES` is compiled again for every batch, with seven bind parameters per event.

It imports only the public `dagster` and `dagster_postgres` packages; it overrides methods of
dagster-postgres 0.29.27 (pinned), and tests/test_market_step.py compares what it stores with
what dagster-postgres's own storage stores for the same run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
import sqlalchemy as sa
from dagster_postgres import PostgresEventLogStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

POOL_RECYCLE_SECONDS = 3600
"""A held connection is replaced after an hour (as the webserver's)."""
MAX_OVERFLOW = 10
"""Connections beyond the one held, for threads of the same process (closed when returned)."""
PLANNED = "PLANNED"  # AssetCheckExecutionRecordStatus.PLANNED

_EVENT_ARRAYS = {
    "run_id": "TEXT",
    "event": "TEXT",
    "dagster_event_type": "TEXT",
    "timestamp": "TIMESTAMP",
    "step_key": "TEXT",
    "asset_key": "TEXT",
    "partition": "TEXT",
}
"""The columns of Dagster's `event_logs` an event fills (the id is the table's serial)."""
_EVENT_COLUMNS = tuple(_EVENT_ARRAYS)
_EVENT_LOGS = sa.table("event_logs", sa.column("id"), *map(sa.column, _EVENT_COLUMNS))
_EVENT_ROWS: sa.Select[*tuple[Any, ...]] = (
    sa.select(*map(sa.column, _EVENT_COLUMNS))
    .select_from(
        sa.text(
            "unnest("
            + ", ".join(f"CAST(:{c} AS {t}[])" for c, t in _EVENT_ARRAYS.items())
            + f") WITH ORDINALITY AS event_rows({', '.join(_EVENT_COLUMNS)}, position)"
        )
    )
    .order_by(sa.column("position"))
)
"""The batch's rows in the batch's order (ids are given in that order)."""

# Dagster's `asset_check_executions` rows of one planned check: one per partition key, the
# event text bound once.
_PLANNED_ROWS = sa.text(
    "INSERT INTO asset_check_executions (asset_key, check_name, partition, run_id, "
    "execution_status, evaluation_event, evaluation_event_timestamp, evaluation_event_storage_id) "
    "SELECT :asset_key, :check_name, partition_key, :run_id, :execution_status, :evaluation_event, "
    "CAST(:evaluation_event_timestamp AS TIMESTAMP), CAST(:evaluation_event_storage_id AS BIGINT) "
    "FROM unnest(CAST(:partition_keys AS TEXT[])) AS partition_key"
)
_PLANNED_TYPES = frozenset(
    {
        dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
        dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED,
    }
)
"""What a range run plans per partition and per check: stored here as a batch."""
_CHECK_PLANNED = dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED


def _all_planned(events: Sequence[dg.EventLogEntry]) -> bool:
    return bool(events) and all(
        e.dagster_event is not None
        and e.dagster_event.event_type in _PLANNED_TYPES
        and (e.dagster_event.event_type == _CHECK_PLANNED or e.dagster_event.asset_key)
        for e in events
    )


def _is_check(event: dg.EventLogEntry) -> bool:
    return event.get_dagster_event().event_type == _CHECK_PLANNED


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

    def prepare_insert_event_batch(self, events: Sequence[dg.EventLogEntry]) -> Any:
        """Dagster's rows for the events, inserted from one array per column (in order)."""
        rows = [self._event_to_row(event) for event in events]
        arrays = {column: [row[column] for row in rows] for column in _EVENT_COLUMNS}
        return sa.insert(_EVENT_LOGS).from_select(_EVENT_COLUMNS, _EVENT_ROWS.params(arrays))

    def store_event_batch(self, events: Sequence[dg.EventLogEntry]) -> None:
        """A range run's planned events as dagster-postgres stores a batch of materializations;
        every other batch as dagster-postgres does."""
        if _all_planned(events):
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
        assets = [(e, i) for e, i in zip(events, ids, strict=True) if not _is_check(e)]
        with self.index_transaction() as conn:
            self._store_asset_event_tags(conn, [e for e, _ in assets], [i for _, i in assets])
            latest = {e.get_dagster_event().asset_key: (e, i) for e, i in assets}
            for event, event_id in latest.values():
                self._store_asset_event(conn, event, event_id)
        for event, event_id in zip(events, ids, strict=True):
            if _is_check(event):
                self.store_asset_check_event(event, event_id)

    def _store_asset_check_evaluation_planned(
        self, event: dg.EventLogEntry, event_id: int | None
    ) -> None:
        """As dagster's, one row per partition, with the event serialized and sent once."""
        planned: Any = event.get_dagster_event().event_specific_data  # AssetCheckEvaluationPlanned
        subset = planned.partitions_subset
        keys: list[str | None] = list(subset.get_partition_keys()) if subset else [None]
        row = {
            "asset_key": planned.asset_key.to_string(),
            "check_name": planned.check_name,
            "run_id": event.run_id,
            "execution_status": PLANNED,
            "evaluation_event": dg.serialize_value(event),
            "evaluation_event_timestamp": self._event_insert_timestamp(event),
            "evaluation_event_storage_id": event_id,
            "partition_keys": keys,
        }
        with self.index_connection() as connection:
            connection.execute(_PLANNED_ROWS, row)
