"""The SQL warehouse: schema, migrations, bulk upserts, failure bookkeeping and queries."""

from stocksync_dagster.warehouse.engine import Warehouse
from stocksync_dagster.warehouse.upsert import UpsertStats

__all__ = ["UpsertStats", "Warehouse"]
