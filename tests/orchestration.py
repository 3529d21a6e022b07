"""The project's real definitions for orchestration tests, with resources swapped per test."""

import datetime as dt

import dagster as dg

from stocksync_dagster.core import trading_calendar
from stocksync_dagster.definitions import defs as project_defs
from stocksync_dagster.defs.market.jobs import range_tags
from stocksync_dagster.resources import DemoSourceResource, MarketSourceResource, WarehouseResource

DEMO_STOCKS = 20


class DownSourceResource(MarketSourceResource):
    """A source that is down: the step fails at once (no retry), so the partition is FAILED."""

    def open(self):  # type: ignore[no-untyped-def]
        raise dg.Failure(
            "source unreachable at https://api.example/x?token=SECRET123", allow_retries=False
        )


def build_defs(warehouse_url: str, source: MarketSourceResource | None = None) -> dg.Definitions:
    """The project's definitions on the demo source (or `source`) and the warehouse at the URL."""
    # `Definitions.with_resources` merges and refuses a second resource under the same key.
    resources = {
        **(project_defs.resources or {}),
        "source": source or DemoSourceResource(stocks=DEMO_STOCKS),
        "warehouse": WarehouseResource(url=warehouse_url),
    }
    d = project_defs
    return dg.Definitions(
        assets=d.assets,
        asset_checks=d.asset_checks,
        schedules=d.schedules,
        sensors=d.sensors,
        jobs=d.jobs,
        executor=d.executor,
        loggers=d.loggers,
        resources=resources,
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
    resources = dict(defs.resources or {})
    if source is not None:
        resources["source"] = source
    return dg.materialize(
        [a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition)],
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
