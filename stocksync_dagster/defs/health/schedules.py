"""The health-check schedule: every asset check, even on days no sync ran."""

import dagster as dg

asset_health_checks = dg.define_asset_job(
    "asset_health_checks",
    selection=dg.AssetSelection.all_asset_checks(),
    tags={"dagster/max_runtime": "3600"},  # run monitoring fails it after an hour
    description="Every asset check over the whole history, without materializing anything.",
)

asset_health_checks_schedule = dg.ScheduleDefinition(
    name="asset_health_checks_schedule",
    job=asset_health_checks,
    cron_schedule="0 20 * * 1-5",
    execution_timezone="Asia/Shanghai",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="20:00 Asia/Shanghai on weekdays (the freshness deadline): runs every asset "
    "check over the whole history, even when no sync ran, so a stopped daemon or a skipped "
    "nightly run still turns the checks red.",
)
