"""Dagster resources: the warehouse and the interchangeable market sources."""

from stocksync_dagster.resources.sources import (
    BaostockSourceResource,
    DemoSourceResource,
    MarketSourceResource,
    TushareSourceResource,
    build_source_resource,
)
from stocksync_dagster.resources.warehouse import WarehouseResource, build_warehouse_resource

__all__ = [
    "BaostockSourceResource",
    "DemoSourceResource",
    "MarketSourceResource",
    "TushareSourceResource",
    "WarehouseResource",
    "build_source_resource",
    "build_warehouse_resource",
]
