"""Dagster instance storage for production: Postgres event log that keeps its connection open.

dagster-postgres opens a new connection for every statement (SQLAlchemy `NullPool`) unless the
process is the webserver, which calls `optimize_for_webserver` to hold one. A range run stores
a few events per partition, each with its own connections; on this project's 2-core reference
machine connecting was a third of a 250-partition run's bookkeeping. This event log storage is
dagster-postgres's own, pooled the way the webserver pools it, in every process that uses it
(daemon, run workers, CLI). Configured in `deploy/dagster.postgres.yaml`.

It also stores a check's planned event of a range run without re-serializing it per
partition. Dagster gives every check planned in a partitioned run the run's partition subset
(unpartitioned checks too) and writes one `asset_check_executions` row per partition, each with
the whole event serialized again, partitions definition included: for 11 checks x 1,000
partitions x a definition listing every holiday since the history starts, that was most of a
range run's bookkeeping. The rows are the same; the event is serialized once, and sent to the
server once per check (`INSERT ... SELECT ... FROM unnest(<partition keys>)`) rather than once
per row, which was most of what the check rows still cost. (This overrides a private method:
dagster is pinned to 1.13.27, and tests/test_market_step.py compares the rows with
dagster-postgres's own.)
"""

from __future__ import annotations

from collections.abc import Mapping
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

# Dagster's `asset_check_executions` rows of one planned check: one per partition key, the
# event text bound once.
_PLANNED_ROWS = sa.text(
    "INSERT INTO asset_check_executions (asset_key, check_name, partition, run_id, "
    "execution_status, evaluation_event, evaluation_event_timestamp, evaluation_event_storage_id) "
    "SELECT :asset_key, :check_name, partition_key, :run_id, :execution_status, :evaluation_event, "
    "CAST(:evaluation_event_timestamp AS TIMESTAMP), CAST(:evaluation_event_storage_id AS BIGINT) "
    "FROM unnest(CAST(:partition_keys AS TEXT[])) AS partition_key"
)


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

    def _store_asset_check_evaluation_planned(
        self, event: dg.EventLogEntry, event_id: int | None
    ) -> None:
        """As dagster's, one row per partition, with the event serialized and sent once.

        Overrides a private method of dagster-postgres 0.29.27 (pinned); the test compares the
        rows with those the stock storage writes for the same run."""
        planned: Any = event.get_dagster_event().event_specific_data  # AssetCheckEvaluationPlanned
        subset = planned.partitions_subset
        keys: list[str | None] = list(subset.get_partition_keys()) if subset else [None]
        with self.index_connection() as connection:
            connection.execute(
                _PLANNED_ROWS,
                {
                    "asset_key": planned.asset_key.to_string(),
                    "check_name": planned.check_name,
                    "run_id": event.run_id,
                    "execution_status": PLANNED,
                    "evaluation_event": dg.serialize_value(event),
                    "evaluation_event_timestamp": self._event_insert_timestamp(event),
                    "evaluation_event_storage_id": event_id,
                    "partition_keys": keys,
                },
            )
