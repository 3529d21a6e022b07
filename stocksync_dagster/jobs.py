"""Jobs launched by the schedules and sensors, their run tags and run config, partition state."""

from collections.abc import Iterable, Mapping, Sequence

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition as AssetJob,  # what define_asset_job returns; not exported
)

MARKET_ASSETS = ("daily_bars", "adj_factor")
REFERENCE_ASSETS = ("trade_calendar", "stock_basic")
NIGHTLY_JOB = "nightly_sync"
MARKET_JOB = "market_sync"

# Run tags: `datasource` is what dagster.yaml's tag concurrency limit keys on; the trigger tag
# says which schedule/sensor asked for a run (filter on it in the Runs page).
DATASOURCE_TAG = "datasource"
TRIGGER_TAG = "stocksync/trigger"
PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

Status = dg.AssetPartitionStatus | None


def build_jobs(source_name: str) -> tuple[AssetJob, AssetJob]:
    """`nightly_sync` (calendar + stock list, then that day's market data) and `market_sync`."""
    tags = {DATASOURCE_TAG: source_name}
    nightly = dg.define_asset_job(
        NIGHTLY_JOB,
        selection=[*REFERENCE_ASSETS, *MARKET_ASSETS],
        tags=tags,
        description="One trading day: refresh trade_calendar and stock_basic, then the market "
        "tables (with a look-back so late factors heal). Launched by the schedules.",
    )
    market = dg.define_asset_job(
        MARKET_JOB,
        selection=list(MARKET_ASSETS),
        tags=tags,
        description="daily_bars / adj_factor over a partition range (one run per range). "
        "Launched by the gap and repair sensors.",
    )
    return nightly, market


def market_run_config(assets: Iterable[str] = MARKET_ASSETS, **config: object) -> dict[str, object]:
    """Run config setting `MarketSyncConfig` fields on the selected market assets."""
    if not config:
        return {}
    return {"ops": {asset: {"config": dict(config)} for asset in assets}}


def range_tags(start: str, end: str) -> dict[str, str]:
    """Tags that make a run materialize the partition range [start, end] (single-run backfill)."""
    return {RANGE_START_TAG: start, RANGE_END_TAG: end}


def market_status(
    instance: dg.DagsterInstance,
    partitions: dg.PartitionsDefinition,
    keys: Sequence[str],
    assets: Sequence[str] = MARKET_ASSETS,
) -> dict[str, Mapping[str, Status]]:
    """Per asset: partition key -> MATERIALIZED / FAILED / IN_PROGRESS, or None (never run)."""
    result = {}
    for asset in assets:
        statuses = instance.get_status_by_partition(dg.AssetKey(asset), list(keys), partitions)
        result[asset] = statuses or {}
    return result


def describe_day(statuses: Mapping[str, Mapping[str, Status]], key: str) -> str | None:
    """A skip reason if `key` needs no run (all materialized or in progress), else None."""
    states = {asset: by_key.get(key) for asset, by_key in statuses.items()}
    if all(s == dg.AssetPartitionStatus.MATERIALIZED for s in states.values()):
        return f"{key} is already materialized ({', '.join(states)})"
    running = [a for a, s in states.items() if s == dg.AssetPartitionStatus.IN_PROGRESS]
    if running:
        return f"{key} is being materialized right now ({', '.join(running)})"
    return None
