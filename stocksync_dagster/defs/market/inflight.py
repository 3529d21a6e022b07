"""What is already running or about to run, so sensors never request it twice."""

from collections.abc import Sequence

import dagster as dg

from stocksync_dagster.defs.market.jobs import (
    PARTITION_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    market_asset_names,
)

UNFINISHED = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]

AssetPartition = tuple[str, str]  # (asset name, partition key)


def unfinished_runs(
    instance: dg.DagsterInstance, tags: dict[str, str] | None = None
) -> Sequence[dg.DagsterRun]:
    return instance.get_runs(filters=dg.RunsFilter(statuses=UNFINISHED, tags=tags or {}))


def run_partitions(run: dg.DagsterRun, keys: Sequence[str]) -> set[AssetPartition]:
    """The market (asset, partition) pairs a run targets: its partition tag or range tags."""
    if PARTITION_TAG in run.tags:
        targeted = [run.tags[PARTITION_TAG]]
    elif RANGE_START_TAG in run.tags and RANGE_END_TAG in run.tags:
        start, end = run.tags[RANGE_START_TAG], run.tags[RANGE_END_TAG]
        targeted = [k for k in keys if start <= k <= end]  # ISO dates sort as strings
    else:
        return set()
    assets = (
        [k.to_user_string() for k in run.asset_selection]
        if run.asset_selection
        else market_asset_names()
    )
    return {(a, k) for a in assets if a in market_asset_names() for k in targeted}


def _unfinished_backfills(instance: dg.DagsterInstance, keys: Sequence[str]) -> set[AssetPartition]:
    # Asset backfills (e.g. launched from the UI) target partitions before their runs exist.
    # There is no public API for a backfill's target yet.
    from dagster._core.execution.backfill import BulkActionStatus

    pairs: set[AssetPartition] = set()
    for backfill in instance.get_backfills(status=BulkActionStatus.REQUESTED):
        data = backfill.asset_backfill_data
        if data is None:
            continue
        for item in data.target_subset.iterate_asset_partitions():
            name = item.asset_key.to_user_string()
            if name in market_asset_names() and item.partition_key is not None:
                pairs.add((name, item.partition_key))
    return pairs


def in_flight(instance: dg.DagsterInstance, keys: Sequence[str]) -> set[AssetPartition]:
    """Market partitions targeted by unfinished runs or unfinished asset backfills."""
    pairs = _unfinished_backfills(instance, keys)
    for run in unfinished_runs(instance):
        pairs |= run_partitions(run, keys)
    return pairs
