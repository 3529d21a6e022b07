"""Dagster resources: the warehouse and the interchangeable market sources."""

from stocksync_dagster.resources.sources import (
    BaostockSourceResource,
    DemoSourceResource,
    FallbackSourceResource,
    MarketSourceResource,
    SourceNotOpenError,
    TushareSourceResource,
)
from stocksync_dagster.resources.warehouse import WarehouseResource, build_warehouse_resource

__all__ = [
    "BaostockSourceResource",
    "DemoSourceResource",
    "FallbackSourceResource",
    "MarketSourceResource",
    "SourceNotOpenError",
    "TushareSourceResource",
    "WarehouseResource",
    "build_warehouse_resource",
]
