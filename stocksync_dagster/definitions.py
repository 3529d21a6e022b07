"""The Dagster definitions: `dagster dev -w workspace.yaml` loads `defs` from here."""

from __future__ import annotations

import dagster as dg

from stocksync_dagster.assets.market import build_market_assets
from stocksync_dagster.assets.reference import build_reference_assets
from stocksync_dagster.checks import build_asset_checks, build_health_check_schedule
from stocksync_dagster.executors import executor_from_env
from stocksync_dagster.jobs import build_jobs
from stocksync_dagster.partitions import trading_day_partitions
from stocksync_dagster.resources import build_source_resource, build_warehouse_resource
from stocksync_dagster.schedules import build_schedules
from stocksync_dagster.sensors import build_sensors
from stocksync_dagster.settings import Settings

settings = Settings.from_env()
trading_days = trading_day_partitions(settings.start_date)
nightly_job, market_job = build_jobs(settings.source)

defs = dg.Definitions(
    assets=[*build_reference_assets(settings.start_date), *build_market_assets(trading_days)],
    asset_checks=build_asset_checks(settings.start_date),
    jobs=[nightly_job, market_job],
    schedules=[
        *build_schedules(nightly_job, trading_days, settings),
        build_health_check_schedule(),
    ],
    sensors=build_sensors(market_job, trading_days, settings),
    resources={
        "source": build_source_resource(settings),
        "warehouse": build_warehouse_resource(settings),
    },
    executor=executor_from_env(),
)
