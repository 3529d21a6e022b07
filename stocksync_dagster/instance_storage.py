"""Dagster instance storage for production: Postgres event log that keeps its connection open.

dagster-postgres opens a new connection for every statement (SQLAlchemy `NullPool`) unless the
process is the webserver, which calls `optimize_for_webserver` to hold one. A range run stores
a few events per partition, each with its own connections; on this project's 2-core reference
machine connecting was a third of a 250-partition run's bookkeeping. This event log storage is
dagster-postgres's own, pooled the way the webserver pools it, in every process that uses it
(daemon, run workers, CLI). Configured in `deploy/dagster.postgres.yaml`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster._serdes import ConfigurableClassData
from dagster_postgres import PostgresEventLogStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

POOL_RECYCLE_SECONDS = 3600
"""A held connection is replaced after an hour (as the webserver's)."""
MAX_OVERFLOW = 10
"""Connections beyond the one held, for threads of the same process (closed when returned)."""


class PooledPostgresEventLogStorage(PostgresEventLogStorage):
    """`PostgresEventLogStorage` holding a pooled connection per process (no statement timeout)."""

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
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
