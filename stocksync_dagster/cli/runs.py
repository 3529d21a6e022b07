"""Materializations launched from the CLI: real Dagster runs on the persistent instance."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import dagster as dg

from stocksync_dagster.defs.market.jobs import range_tags

MARKET_ASSETS = ("daily_bars", "adj_factor")
REFERENCE_ASSETS = ("trade_calendar", "stock_basic")

QUIET = "WARNING"


def materialize_range(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    start: dt.date,
    end: dt.date,
    assets: Sequence[str] = MARKET_ASSETS,
    resources: dict[str, object] | None = None,
    tags: dict[str, str] | None = None,
    log_level: str = "INFO",
) -> dg.ExecuteInProcessResult:
    """One single-run backfill of `assets` over the partition keys in [start, end]."""
    tags = {**(tags or {}), **range_tags(start.isoformat(), end.isoformat())}
    return _materialize(defs, instance, assets, resources, tags, log_level)


def materialize_unpartitioned(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    assets: Sequence[str] = REFERENCE_ASSETS,
    resources: dict[str, object] | None = None,
    tags: dict[str, str] | None = None,
    log_level: str = "INFO",
) -> dg.ExecuteInProcessResult:
    """One run of the unpartitioned `assets`."""
    return _materialize(defs, instance, assets, resources, tags or {}, log_level)


def _materialize(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    assets: Sequence[str],
    resources: dict[str, object] | None,
    tags: dict[str, str],
    log_level: str,
) -> dg.ExecuteInProcessResult:
    """Materialize `assets` and their checks in one in-process run on `instance`."""
    return dg.materialize(
        _all_assets_and_checks(defs),
        selection=_selection(assets, defs),
        instance=instance,
        resources=resources or defs.resources,
        tags=tags,
        run_config=_console(log_level),
        raise_on_error=False,
    )


def _console(log_level: str) -> dict:
    return {"loggers": {"console": {"config": {"log_level": log_level}}}}


def _all_assets_and_checks(defs: dg.Definitions) -> list:
    return [*(defs.assets or []), *(defs.asset_checks or [])]


def _selection(assets: Sequence[str], defs: dg.Definitions) -> dg.AssetSelection:
    """The assets plus the checks that target them."""
    keys = [dg.AssetKey(a) for a in assets]
    return dg.AssetSelection.assets(*keys) | dg.AssetSelection.checks_for_assets(*keys)


def first_failure(result: dg.ExecuteInProcessResult) -> str:
    """The first line of the first step failure, for a one-line CLI error."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error:
            return event.step_failure_data.error.message.strip().splitlines()[0]
    return "the run failed (see the run's logs in the Dagster UI)"
