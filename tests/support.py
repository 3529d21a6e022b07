"""Small helpers shared by several test modules."""

import contextlib
import datetime as dt
import json
from collections.abc import Iterator

import dagster as dg
import sqlalchemy as sa

from stocksync_dagster.core.warehouse import Warehouse
from stocksync_dagster.defs.market.jobs import range_tags


@contextlib.contextmanager
def closing_warehouse(url: str) -> Iterator[sa.Connection]:
    """A read connection whose engine is disposed afterwards (no pooled sessions left over)."""
    warehouse = Warehouse(url)
    try:
        with warehouse.connect() as connection:
            yield connection
    finally:
        warehouse.dispose()


def materializations(
    result: dg.ExecuteInProcessResult, asset: str
) -> list[dg.AssetMaterialization]:
    """The run's materializations of `asset` (one per partition), whatever step computed it."""
    return [
        event.step_materialization_data.materialization
        for event in result.get_asset_materialization_events()
        if event.asset_key == dg.AssetKey(asset)
    ]


def market_sync_command(dagster: str, start: dt.date | str, end: dt.date | str) -> list[str]:
    """`dagster job execute` of `market_sync` over the partition range [start, end]."""
    tags = range_tags(str(start), str(end))
    return [dagster, "job", "execute", "-m", "stocksync_dagster.definitions", "-j", "market_sync",
            "--tags", json.dumps(tags)]  # fmt: skip
