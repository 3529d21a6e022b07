"""The project's real definitions for orchestration tests, with resources swapped per test."""

import datetime as dt
from typing import NoReturn

import dagster as dg

from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.sources.base import MarketSource
from stocksync_dagster.definitions import defs as project_defs
from stocksync_dagster.defs.market.jobs import range_tags
from stocksync_dagster.resources import DemoSourceResource, MarketSourceResource, WarehouseResource

DEMO_STOCKS = 20


class _UnreachableSource(MarketSource):
    """Every call fails at once (no retry)."""

    def _down(self, *args: object) -> NoReturn:
        raise dg.Failure(
            "source unreachable at https://api.example/x?token=SECRET123", allow_retries=False
        )

    trade_calendar = stock_basic = daily_bars = adj_factors = _down  # type: ignore[assignment]


class DownSourceResource(MarketSourceResource):
    """A source that is down: the step fails at once (no retry), so the partition is FAILED."""

    def make_source(self) -> MarketSource:
        return _UnreachableSource()


def build_defs(warehouse_url: str, source: MarketSourceResource | None = None) -> dg.Definitions:
    """The project's definitions on the demo source (or `source`) and the warehouse at the URL."""
    overrides = {
        "source": source or DemoSourceResource(stocks=DEMO_STOCKS),
        "warehouse": WarehouseResource(url=warehouse_url),
    }
    # Not `with_resources`: it merges, and merge refuses a second, different resource for a key.
    return dg.Definitions(
        assets=project_defs.assets,
        asset_checks=project_defs.asset_checks,
        jobs=project_defs.jobs,
        schedules=project_defs.schedules,
        sensors=project_defs.sensors,
        executor=project_defs.executor,
        loggers=project_defs.loggers,
        metadata=project_defs.metadata,
        resources={**(project_defs.resources or {}), **overrides},
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
