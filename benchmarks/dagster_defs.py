"""Real Dagster definitions and a persisted instance for the benchmarks."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg

from benchmarks.common import ROOT
from stocksync_dagster.resources import MarketSourceResource
from tests.orchestration import build_defs as project_defs_with


def build_defs(source: MarketSourceResource, warehouse_url: str) -> dg.Definitions:
    """The project's real definitions with `source` and a scratch warehouse.

    Partitions start at STOCKSYNC_START_DATE (default 2025-01-02, the sizes' first day).
    """
    return project_defs_with(warehouse_url, source)


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
    events = [
        e.step_materialization_data.materialization
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(asset)
    ]
    if not events:
        return {}
    return {k: getattr(v, "value", v) for k, v in events[-1].metadata.items()}
