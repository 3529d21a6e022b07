"""The declarative condition that heals history: missing or failed market partitions.

Set on `daily_bars` and `adj_factor`; evaluated on every trading-day partition (they end at
the last settled trading day, so nothing later is ever requested) by `gap_automation_sensor`
(`gaps.py`). Imports nothing from the other market modules: the assets import it.
"""

import dagster as dg

RETRY_CRON = "0 * * * *"
"""A partition requested once is not requested again before the next hour starts."""

GAP_FILL = (
    (dg.AutomationCondition.missing() | dg.AutomationCondition.execution_failed())
    # in_progress() is run_in_progress() | backfill_in_progress(): queued runs, running
    # runs and backfills (UI, CLI or this sensor) that still have to execute the partition.
    & ~dg.AutomationCondition.in_progress()
    # The newest day belongs to the nightly and catch-up schedules: they fetch it at
    # STOCKSYNC_NIGHTLY_AT (when the source has published) with the late-data look-back.
    & ~dg.AutomationCondition.in_latest_time_window()
    & ~dg.AutomationCondition.newly_requested().since(
        dg.AutomationCondition.cron_tick_passed(RETRY_CRON, "Asia/Shanghai")
    )
).with_label("missing or failed, not in flight, not the newest day, not requested this hour")
"""Missing or failed, nothing in flight for it, not the newest day, not requested this hour.

Unlike `on_missing()`, partitions already missing at the first evaluation count: the whole
history is filled. Upstream reference assets are not awaited or requested: a market range
fetches its own universe from the source.
"""
