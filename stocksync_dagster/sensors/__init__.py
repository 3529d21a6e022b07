"""Sensors: gap filling, failure repair (补拉) and failure alerts."""

import dagster as dg

from stocksync_dagster.jobs import AssetJob
from stocksync_dagster.sensors.alerts import build_alert_sensor
from stocksync_dagster.sensors.gaps import build_gap_sensor
from stocksync_dagster.sensors.repair import build_repair_sensor
from stocksync_dagster.settings import Settings


def build_sensors(
    market_job: AssetJob,
    partitions: dg.PartitionsDefinition,
    settings: Settings,
) -> list[dg.SensorDefinition]:
    """All sensors for the settings' webhooks and UI URL."""
    return [
        build_gap_sensor(market_job, partitions),
        build_repair_sensor(market_job),
        build_alert_sensor(settings.alert_webhooks, settings.ui_url, settings.tushare_tokens),
    ]


__all__ = ["build_alert_sensor", "build_gap_sensor", "build_repair_sensor", "build_sensors"]
