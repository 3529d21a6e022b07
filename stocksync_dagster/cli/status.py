"""`stocksync status`: partitions materialized / missing / failed, open failures, check results."""

from __future__ import annotations

import click
import dagster as dg
import pandas as pd

from stocksync_dagster.cli.instance import open_instance
from stocksync_dagster.core.settings import Settings
from stocksync_dagster.core.warehouse import Warehouse
from stocksync_dagster.core.warehouse.queries import failure_summary


def partition_status(defs: dg.Definitions, instance: dg.DagsterInstance) -> pd.DataFrame:
    """One row per asset: partitions total / materialized / failed / in progress / missing."""
    rows = []
    for asset in defs.resolve_all_asset_specs():
        key = asset.key
        partitions = asset.partitions_def
        if partitions is None:
            record = instance.get_latest_materialization_event(key)
            rows.append(
                {
                    "asset": key.to_user_string(),
                    "partitions": 1,
                    "materialized": int(record is not None),
                    "failed": 0,
                    "in_progress": 0,
                    "missing": int(record is None),
                    "last_materialized": pd.Timestamp(record.timestamp, unit="s").strftime(
                        "%Y-%m-%d %H:%M"
                    )
                    if record
                    else "",
                }
            )
            continue
        keys = partitions.get_partition_keys(dynamic_partitions_store=instance)
        statuses = instance.get_status_by_partition(key, keys, partitions) or {}
        counts = pd.Series([s.value if s else "MISSING" for s in statuses.values()]).value_counts()
        materialized = [k for k, s in statuses.items() if s == dg.AssetPartitionStatus.MATERIALIZED]
        rows.append(
            {
                "asset": key.to_user_string(),
                "partitions": len(keys),
                "materialized": int(counts.get("MATERIALIZED", 0)),
                "failed": int(counts.get("FAILED", 0)),
                "in_progress": int(counts.get("IN_PROGRESS", 0)),
                "missing": int(counts.get("MISSING", 0)),
                "last_materialized": max(materialized) if materialized else "",
            }
        )
    return pd.DataFrame(rows)


def check_status(defs: dg.Definitions, instance: dg.DagsterInstance) -> pd.DataFrame:
    """Latest evaluation of every asset check."""
    rows = []
    for check_key in defs.resolve_asset_graph().asset_check_keys:
        latest = instance.event_log_storage.get_latest_asset_check_execution_by_key([check_key])
        record = latest.get(check_key)
        evaluation = record.evaluation if record else None
        if not isinstance(evaluation, dg.AssetCheckEvaluation):
            evaluation = None  # planned but never evaluated (the run died first)
        failed = evaluation is not None and not evaluation.passed
        rows.append(
            {
                "check": f"{check_key.asset_key.to_user_string()}:{check_key.name}",
                "result": "not run"
                if record is None
                else (
                    "PASSED"
                    if evaluation and evaluation.passed
                    else f"FAILED ({evaluation.severity.value})"
                    if failed
                    else record.status.value
                ),
                # The check's one-line description names the offending days / codes.
                "detail": _shorten(evaluation.description or "") if failed else "",
            }
        )
    frame = pd.DataFrame(rows, columns=["check", "result", "detail"])
    return frame.sort_values("check", ignore_index=True)


def _shorten(text: str, width: int = 100) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def show_status(settings: Settings) -> None:
    from stocksync_dagster.definitions import defs

    instance = open_instance()
    click.echo(f"Dagster instance: {instance.root_directory}")
    click.echo("")
    click.echo(partition_status(defs, instance).to_string(index=False))
    checks = check_status(defs, instance)
    if len(checks):
        click.echo("")
        click.echo(checks.to_string(index=False))
    warehouse = Warehouse(settings.database_url)
    with warehouse.connect() as connection:
        failures = failure_summary(connection)
    click.echo("")
    if failures.empty:
        click.echo(f"sync failures: none ({warehouse.safe_url})")
    else:
        click.echo(f"sync failures ({warehouse.safe_url}):")
        click.echo(failures.to_string(index=False))
