"""The resources every asset, check and sensor uses: the warehouse and the market source."""

import dagster as dg

from stocksync_dagster.core.settings import current_settings
from stocksync_dagster.resources import build_source_resource, build_warehouse_resource


@dg.definitions
def resources() -> dg.Definitions:
    """`source` is the implementation STOCKSYNC_SOURCE names; `warehouse` STOCKSYNC_DATABASE_URL."""
    settings = current_settings()
    return dg.Definitions(
        resources={
            "source": build_source_resource(settings),
            "warehouse": build_warehouse_resource(settings),
        }
    )
