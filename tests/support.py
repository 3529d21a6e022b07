"""Small helpers shared by several test modules."""

import contextlib
from collections.abc import Iterator

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
