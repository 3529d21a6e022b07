"""The Dagster definitions: `dagster dev -w workspace.yaml` loads `defs` from here."""

from __future__ import annotations

import dagster as dg

from stocksync_dagster.assets.market import build_market_assets
from stocksync_dagster.assets.reference import build_reference_assets
from stocksync_dagster.partitions import trading_day_partitions
from stocksync_dagster.resources import build_source_resource, build_warehouse_resource
from stocksync_dagster.settings import Settings

settings = Settings.from_env()
trading_days = trading_day_partitions(settings.start_date)

defs = dg.Definitions(
    assets=[*build_reference_assets(settings.start_date), *build_market_assets(trading_days)],
    resources={
        "source": build_source_resource(settings),
        "warehouse": build_warehouse_resource(settings),
    },
)
