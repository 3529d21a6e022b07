"""The resources every asset, check and sensor uses: the warehouse and the market source."""

import dagster as dg

from stocksync_dagster.core.settings import Settings, current_settings
from stocksync_dagster.resources import (
    BaostockSourceResource,
    DemoSourceResource,
    MarketSourceResource,
    TushareSourceResource,
    build_warehouse_resource,
)


def source_resource(settings: Settings) -> MarketSourceResource:
    """The source STOCKSYNC_SOURCE names; the token stays an `EnvVar`, so the UI never shows it."""
    if settings.source == "demo":
        return DemoSourceResource()
    if settings.source == "tushare":
        return TushareSourceResource(
            tokens=dg.EnvVar("TUSHARE_TOKEN"), api_url=settings.tushare_api_url
        )
    return BaostockSourceResource(server=settings.baostock_server)


def project_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """The resources of a run; the CLI opens the same ones (`dg.build_resources`)."""
    return {"source": source_resource(settings), "warehouse": build_warehouse_resource(settings)}


@dg.definitions
def resources() -> dg.Definitions:
    """`source` is the implementation STOCKSYNC_SOURCE names; `warehouse` STOCKSYNC_DATABASE_URL."""
    return dg.Definitions(resources=project_resources(current_settings()))
