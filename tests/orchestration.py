"""Definitions for orchestration tests: the real jobs, schedules and sensors on the demo source."""

import datetime as dt

import dagster as dg

from stocksync_dagster import trading_calendar
from stocksync_dagster.assets.market import build_market_assets
from stocksync_dagster.assets.reference import build_reference_assets
from stocksync_dagster.jobs import build_jobs, range_tags
from stocksync_dagster.partitions import trading_day_partitions
from stocksync_dagster.resources import DemoSourceResource, MarketSourceResource, WarehouseResource
from stocksync_dagster.schedules import build_schedules
from stocksync_dagster.sensors import build_sensors
from stocksync_dagster.settings import Settings

DEMO_STOCKS = 20


class DownSourceResource(MarketSourceResource):
    """A source that is down: the step fails at once (no retry), so the partition is FAILED."""

    def open(self):  # type: ignore[no-untyped-def]
        raise dg.Failure(
            "source unreachable at https://api.example/x?token=SECRET123", allow_retries=False
        )


def build_defs(
    settings: Settings, extra_sensors: list[dg.SensorDefinition] | None = None
) -> dg.Definitions:
    partitions = trading_day_partitions(settings.start_date)
    nightly, market = build_jobs(settings.source)
    return dg.Definitions(
        assets=[*build_reference_assets(settings.start_date), *build_market_assets(partitions)],
        jobs=[nightly, market],
        schedules=build_schedules(nightly, partitions, settings),
        sensors=[*build_sensors(market, partitions, settings), *(extra_sensors or [])],
        resources={
            "source": DemoSourceResource(stocks=DEMO_STOCKS),
            "warehouse": WarehouseResource(url=settings.database_url),
        },
    )


def materialize_range(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    start: str,
    end: str,
    assets: tuple[str, ...] = ("daily_bars", "adj_factor"),
    source: MarketSourceResource | None = None,
    run_config: dict | None = None,
) -> dg.ExecuteInProcessResult:
    """One range run of market assets (as sensors request them), on the demo or a down source."""
    resources = dict(defs.resources)
    if source is not None:
        resources["source"] = source
    return dg.materialize(
        [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)],  # type: ignore[union-attr]
        selection=list(assets),
        instance=instance,
        resources=resources,
        tags=range_tags(start, end),
        run_config=run_config or {},
        raise_on_error=False,
    )


def recent_trading_days(n: int) -> list[dt.date]:
    """The last `n` settled trading days, ascending."""
    last = trading_calendar.last_settled_trading_day()
    return trading_calendar.trading_days(last - dt.timedelta(days=3 * n + 10), last)[-n:]
