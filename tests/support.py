"""Small helpers shared by several test modules."""

import contextlib
from collections.abc import Iterator

import dagster as dg
import sqlalchemy as sa

from stocksync_dagster.core.warehouse import Warehouse


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
