"""The warehouse resource."""

from __future__ import annotations

import dagster as dg

from stocksync_dagster.core.settings import Settings, validate_database_url
from stocksync_dagster.core.warehouse import Warehouse

_warehouses: dict[str, Warehouse] = {}


class WarehouseResource(dg.ConfigurableResource):
    """The SQL warehouse (`STOCKSYNC_DATABASE_URL`; SQLite under ./.stocksync/ by default)."""

    url: str

    def get(self) -> Warehouse:
        """The process-wide `Warehouse` for this URL (one engine and connection pool)."""
        if self.url not in _warehouses:
            _warehouses[self.url] = Warehouse(validate_database_url(self.url))
        return _warehouses[self.url]


def build_warehouse_resource(settings: Settings) -> WarehouseResource:
    """A URL from the environment stays an `EnvVar`, so its password never shows in the UI."""
    if settings.database_url_from_env:
        return WarehouseResource(url=dg.EnvVar("STOCKSYNC_DATABASE_URL"))
    return WarehouseResource(url=settings.database_url)
