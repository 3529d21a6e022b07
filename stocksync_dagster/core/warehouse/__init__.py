"""The SQL warehouse: schema, migrations, bulk upserts, failure bookkeeping and queries."""

from stocksync_dagster.core.warehouse.engine import Warehouse
from stocksync_dagster.core.warehouse.upsert import UpsertStats

__all__ = ["UpsertStats", "Warehouse"]
