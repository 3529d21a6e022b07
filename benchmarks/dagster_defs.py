"""Real Dagster definitions and a persisted instance for the benchmarks."""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg

from benchmarks.common import ROOT
from stocksync_dagster.checks import build_asset_checks
from stocksync_dagster.defs.market.assets import build_market_assets
from stocksync_dagster.defs.market.partitions import trading_day_partitions
from stocksync_dagster.defs.reference.assets import build_reference_assets
from stocksync_dagster.resources import MarketSourceResource, WarehouseResource


def build_defs(start: dt.date, source: MarketSourceResource, warehouse_url: str) -> dg.Definitions:
    """The project's assets and checks with `source` and a scratch warehouse."""
    return dg.Definitions(
        assets=[
            *build_reference_assets(start),
            *build_market_assets(trading_day_partitions(start)),
        ],
        asset_checks=build_asset_checks(start),
        resources={"source": source, "warehouse": WarehouseResource(url=warehouse_url)},
    )


@contextlib.contextmanager
def temp_instance() -> Iterator[dg.DagsterInstance]:
    """A persisted instance (SQLite storage) under a temporary DAGSTER_HOME."""
    home = Path(tempfile.mkdtemp(prefix="stocksync_bench_home_"))
    config = ROOT / "dagster.yaml"
    if config.is_file():
        shutil.copyfile(config, home / "dagster.yaml")
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield instance
    finally:
        shutil.rmtree(home, ignore_errors=True)


def materialization_metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    """Plain values of the asset's materialization metadata."""
    events = result.asset_materializations_for_node(asset)
    if not events:
        return {}
    return {k: getattr(v, "value", v) for k, v in events[-1].metadata.items()}
