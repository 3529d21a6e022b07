"""The repair sensor (补拉): audit the warehouse, then re-fetch only what is open in `sync_failure`.

Each tick first reads the data: every materialized `daily_bars` day is compared with its
expected universe (listed minus suspended), and what is absent (rows deleted, half a day, a day
lost long before the nightly look-back) is recorded in `sync_failure`. The same tick requests
the repairs, so a hole is healed by the next evaluation with no command typed.
"""

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg
import pandas as pd

from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.warehouse.audit import audit_daily_bars
from stocksync_dagster.core.warehouse.failures import DEFAULT_MAX_RETRIES, open_failures
from stocksync_dagster.core.warehouse.schema import WHOLE_DAY
from stocksync_dagster.defs.market.jobs import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    TRIGGER_TAG,
    market_run_config,
    market_sync,
    range_tags,
)
from stocksync_dagster.resources import WarehouseResource

REPAIR_TRIGGER = "repair-sensor"
REPAIR_ASSET_TAG = "stocksync/repair_asset"
MAX_ATTEMPTS = DEFAULT_MAX_RETRIES  # then a row is `abandoned`
MAX_RUNS_PER_TICK = 3
AUDITED = dg.AssetKey("daily_bars")  # factors arrive late by nature: their checks cover them
UNFINISHED = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def unfinished_runs(instance: dg.DagsterInstance, tags: dict[str, str]) -> Sequence[dg.DagsterRun]:
    """Runs with these tags that are queued or still running."""
    return instance.get_runs(filters=dg.RunsFilter(statuses=UNFINISHED, tags=tags))


@dataclass(frozen=True)
class RepairGroup:
    """Open failures of one asset on consecutive trading days: one run re-fetches them."""

    asset: str
    start: dt.date
    end: dt.date
    codes: tuple[str, ...] | None  # None: a whole day failed, re-fetch the whole market
    attempts: int  # sum of retry_count
    last_attempt: str  # newest last_attempt_at: with `attempts`, changes after every attempt

    @property
    def run_key(self) -> str:
        # Keyed on the attempts so far: a row re-opened by `stocksync failures retry` (retries
        # back to 0) gets a new key, because its last attempt is newer than the first one's.
        scope = "market" if self.codes is None else f"{len(self.codes)}stocks"
        return (
            f"repair:{self.asset}:{self.start}:{self.end}:{scope}:{self.attempts}:"
            f"{self.last_attempt}"
        )


def group_failures(frame: pd.DataFrame, max_days: int = 20) -> list[RepairGroup]:
    """Open `sync_failure` rows -> groups per asset, whole-day or per-stock, consecutive days."""
    groups: list[RepairGroup] = []
    if frame.empty:
        return groups
    frame = frame.assign(whole=frame["code"] == WHOLE_DAY)
    for (asset, whole), rows in frame.groupby(["asset", "whole"], sort=True):
        days = sorted(set(rows["trade_date"]))
        runs: list[list[dt.date]] = []
        for day in days:
            follows = bool(runs) and trading_calendar.previous_trading_day(day) == runs[-1][-1]
            if follows and len(runs[-1]) < max_days:
                runs[-1].append(day)
            else:
                runs.append([day])
        for run in runs:
            part = rows[rows["trade_date"].isin(run)]
            codes = None if whole else tuple(sorted(set(part["code"])))
            last = pd.to_datetime(part["last_attempt_at"], utc=True).max()
            groups.append(
                RepairGroup(
                    str(asset),
                    run[0],
                    run[-1],
                    codes,
                    int(part["retry_count"].sum()),
                    last.strftime("%Y%m%dT%H%M%S%f"),
                )
            )
    return groups


def repair_requests(
    frame: pd.DataFrame, busy_assets: set[str | None], limit: int = MAX_RUNS_PER_TICK
) -> list[dg.RunRequest]:
    """market_sync range runs for the open failures in `frame`, skipping assets being repaired."""
    groups = [g for g in group_failures(frame) if g.asset not in busy_assets][:limit]
    requests = []
    for group in groups:
        config = market_run_config(
            codes=list(group.codes) if group.codes else None,
            max_retries=MAX_ATTEMPTS,
        )
        stocks = "whole market" if group.codes is None else f"{len(group.codes)} stocks"
        requests.append(
            dg.RunRequest(
                run_key=group.run_key,
                asset_selection=[dg.AssetKey(group.asset)],
                run_config=config,
                tags={
                    **range_tags(group.start.isoformat(), group.end.isoformat()),
                    TRIGGER_TAG: REPAIR_TRIGGER,
                    REPAIR_ASSET_TAG: group.asset,
                    "stocksync/repair_stocks": stocks,
                },
            )
        )
    return requests


def busy_repair_assets(instance: dg.DagsterInstance) -> set[str | None]:
    """Assets with a repair run queued or running."""
    return {
        run.tags.get(REPAIR_ASSET_TAG)
        for run in unfinished_runs(instance, {TRIGGER_TAG: REPAIR_TRIGGER})
    }


@dg.sensor(
    name="repair_sensor",
    job=market_sync,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="补拉: every 5 minutes, first audits every materialized daily_bars day against "
    "its expected universe (listed minus suspended) and records what is absent (deleted or "
    "half-written days) in sync_failure; then re-fetches only the stocks open (pending / "
    "retrying) there, on their dates, as market_sync range runs (a day with no bar at all "
    f"re-fetches the market). Each failed attempt counts; after {MAX_ATTEMPTS} a row is "
    "abandoned and no longer requested (`stocksync failures --status abandoned` lists them, "
    "`stocksync failures retry` re-opens them).",
)
def repair_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource
) -> dg.SensorResult:
    """Audits the warehouse, then re-fetches what is open in sync_failure, only on its dates.

    Each failed attempt raises the rows' retry_count; at `MAX_ATTEMPTS` they become
    `abandoned` and are not requested again until `stocksync failures retry` re-opens them.
    """
    materialized = context.instance.get_materialized_partitions(AUDITED)
    with warehouse.get().begin() as connection:
        audit = audit_daily_bars(
            connection,
            AUDITED.to_user_string(),
            [dt.date.fromisoformat(key) for key in materialized],
            MAX_ATTEMPTS,
        )
    if audit.found:
        context.log.warning(
            f"audit: {len(audit.empty_days)} materialized days without any bar "
            f"({', '.join(map(str, audit.empty_days[:10]))}), {len(audit.short_days)} days "
            f"missing expected stocks ({', '.join(map(str, list(audit.short_days)[:10]))}); "
            f"{audit.recorded} new sync_failure rows"
        )
    with warehouse.get().connect() as connection:
        frame = open_failures(connection)
        abandoned = open_failures(connection, statuses=("abandoned",))
    requests = repair_requests(frame, busy_repair_assets(context.instance))
    for request in requests:
        tags = request.tags
        context.log.info(
            f"repair {tags[REPAIR_ASSET_TAG]} {tags[RANGE_START_TAG]}..{tags[RANGE_END_TAG]}: "
            f"{tags['stocksync/repair_stocks']}"
        )
    if len(abandoned):
        context.log.warning(
            f"{len(abandoned)} sync_failure rows abandoned after {MAX_ATTEMPTS} attempts "
            "(not retried; `stocksync failures retry --status abandoned` re-opens them)"
        )
    skip = None
    if not requests:
        skip = (
            f"{len(frame)} open failures, repairs already running"
            if len(frame)
            else f"no open sync failures ({len(abandoned)} abandoned)"
        )
    return dg.SensorResult(run_requests=requests, skip_reason=skip)
