"""The gap sensor: Dagster's automation sensor evaluating `GAP_FILL` on the market assets.

What it selects becomes one asset backfill per tick, so contiguous keys run as range runs
under the assets' backfill policy (`MARKET_BACKFILL_POLICY`: runs of at most 250 partitions).
Named `gap_automation_sensor`, not `gap_sensor`: an automation sensor cannot read the cursor
the old hand-made sensor stored.
"""

import dagster as dg

from stocksync_dagster.core.settings import current_settings
from stocksync_dagster.defs.market.assets import MARKET_GROUP
from stocksync_dagster.defs.market.jobs import DATASOURCE_TAG, TRIGGER_TAG

GAP_TRIGGER = "gap-automation"

gap_automation_sensor = dg.AutomationConditionSensorDefinition(
    "gap_automation_sensor",
    target=dg.AssetSelection.groups(MARKET_GROUP),
    default_status=dg.DefaultSensorStatus.STOPPED,
    minimum_interval_seconds=60,
    emit_backfills=True,
    run_tags={DATASOURCE_TAG: current_settings().source, TRIGGER_TAG: GAP_TRIGGER},
    description="Heals history: turn it on to let it fill itself. Every minute, requests the "
    "daily_bars / adj_factor partitions from STOCKSYNC_START_DATE on that are missing or whose "
    "last run failed, as one backfill of range runs. Skips partitions already running or in a "
    "backfill, and the newest trading day (the nightly and morning schedules own it); a "
    "failing partition is retried at most once an hour.",
)
