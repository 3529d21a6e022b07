"""Jobs launched by the schedules, sensors and the CLI; their run tags and run config."""

from collections.abc import Mapping, Sequence

import dagster as dg

from stocksync_dagster.core.settings import current_settings
from stocksync_dagster.defs.market.assets import MARKET_ASSET_KEYS, MARKET_GROUP, MARKET_OP
from stocksync_dagster.defs.reference.assets import REFERENCE_GROUP

# Run tags: `datasource` is what dagster.yaml's tag concurrency limit keys on; the trigger tag
# says which schedule, sensor or command asked for a run (filter on it in the Runs page).
DATASOURCE_TAG = "datasource"
TRIGGER_TAG = "stocksync/trigger"
PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

Status = dg.AssetPartitionStatus | None

_RUN_TAGS = {DATASOURCE_TAG: current_settings().source}
# Run monitoring (dagster.yaml) cancels, then fails, a run over its job's limit. market_sync
# also carries a year's backfill: range fetches take minutes, a slow source hours.
MAX_RUNTIME_TAG = "dagster/max_runtime"
MARKET_MAX_RUNTIME_SECONDS = 6 * 3600
NIGHTLY_MAX_RUNTIME_SECONDS = 2 * 3600
REFERENCE_MAX_RUNTIME_SECONDS = 3600

nightly_sync = dg.define_asset_job(
    "nightly_sync",
    selection=dg.AssetSelection.groups(REFERENCE_GROUP, MARKET_GROUP),
    tags={**_RUN_TAGS, MAX_RUNTIME_TAG: str(NIGHTLY_MAX_RUNTIME_SECONDS)},
    description="One trading day: refresh trade_calendar and stock_basic, then daily_bars and "
    "adj_factor (with a look-back so late factors heal), and their checks. Launched by the "
    "nightly and morning schedules.",
)

market_sync = dg.define_asset_job(
    "market_sync",
    selection=dg.AssetSelection.groups(MARKET_GROUP),
    tags={**_RUN_TAGS, MAX_RUNTIME_TAG: str(MARKET_MAX_RUNTIME_SECONDS)},
    description="daily_bars and adj_factor over one partition or a range (one step, one source "
    "session per range), with their checks. Launched by `stocksync backfill`, the repair "
    "sensor and the UI.",
)

reference_sync = dg.define_asset_job(
    "reference_sync",
    selection=dg.AssetSelection.groups(REFERENCE_GROUP),
    tags={**_RUN_TAGS, MAX_RUNTIME_TAG: str(REFERENCE_MAX_RUNTIME_SECONDS)},
    description="trade_calendar and stock_basic, with their checks. Launched by `stocksync demo`.",
)


def market_asset_names() -> tuple[str, ...]:
    """`daily_bars`, `adj_factor`: read off the asset definitions, never kept by hand."""
    return tuple(key.to_user_string() for key in MARKET_ASSET_KEYS)


def market_run_config(**config: object) -> dict[str, object]:
    """Run config setting `MarketSyncConfig` fields on the market step (both assets share it)."""
    if not config:
        return {}
    return {"ops": {MARKET_OP: {"config": dict(config)}}}


def range_tags(start: str, end: str) -> dict[str, str]:
    """Tags that make a run materialize the partition range [start, end] (single-run backfill)."""
    return {RANGE_START_TAG: start, RANGE_END_TAG: end}


def market_status(
    instance: dg.DagsterInstance,
    partitions: dg.PartitionsDefinition,
    keys: Sequence[str],
    assets: Sequence[str] | None = None,
) -> dict[str, Mapping[str, Status]]:
    """Per asset: partition key -> MATERIALIZED / FAILED / IN_PROGRESS, or None (never run)."""
    result = {}
    for asset in assets or market_asset_names():
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
