"""The resources every asset, check and sensor uses: the warehouse and the market source."""

import dagster as dg

from stocksync_dagster.core.settings import Settings, current_settings
from stocksync_dagster.resources import (
    BaostockSourceResource,
    DemoSourceResource,
    FallbackSourceResource,
    MarketSourceResource,
    TushareSourceResource,
    build_warehouse_resource,
)


def source_resource(settings: Settings) -> MarketSourceResource:
    """The source STOCKSYNC_SOURCE names; the token stays an `EnvVar`, so the UI never shows it.

    Two names (`baostock,tushare`): the first, with the second as its fallback.
    """
    if settings.fallback_source is not None:
        return FallbackSourceResource(
            primary=single_source_resource(settings, settings.source),
            fallback=single_source_resource(settings, settings.fallback_source),
        )
    return single_source_resource(settings, settings.source)


def single_source_resource(settings: Settings, name: str) -> MarketSourceResource:
    """The resource of one source, `baostock`, `tushare` or `demo`, from the settings."""
    if name == "demo":
        return DemoSourceResource()
    if name == "tushare":
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
