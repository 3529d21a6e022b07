"""`stocksync status`: partitions materialized / missing / failed, open failures, check results."""

from __future__ import annotations

import click
import dagster as dg
import pandas as pd

from stocksync_dagster.cli.instance import existing_instance, instance_location
from stocksync_dagster.core.settings import Settings
from stocksync_dagster.core.warehouse import Warehouse
from stocksync_dagster.core.warehouse.queries import failure_summary

SHOWN_TIMEZONE = "Asia/Shanghai"
_COMPLETED = frozenset({"SUCCEEDED", "FAILED"})


def shanghai_time(timestamp: float) -> str:
    """A Unix timestamp as `YYYY-MM-DD HH:MM+08:00` (Shanghai time, offset shown)."""
    moment = pd.Timestamp(timestamp, unit="s", tz="UTC").tz_convert(SHOWN_TIMEZONE)
    return moment.isoformat(sep=" ", timespec="minutes")


def partition_status(defs: dg.Definitions, instance: dg.DagsterInstance) -> pd.DataFrame:
    """One row per asset, sorted by name: partitions total / materialized / failed / missing.

    `latest_partition` is the newest materialized partition key (a trading day);
    `materialized_at` is when the asset was last materialized, in Shanghai time.
    """
    rows = []
    for asset in sorted(defs.resolve_all_asset_specs(), key=lambda a: a.key.to_user_string()):
        key = asset.key
        partitions = asset.partitions_def
        record = instance.get_latest_materialization_event(key)
        row: dict[str, object] = {"asset": key.to_user_string()}
        if partitions is None:
            row.update(
                partitions=1,
                materialized=int(record is not None),
                failed=0,
                in_progress=0,
                missing=int(record is None),
                latest_partition="",
            )
        else:
            keys = partitions.get_partition_keys(dynamic_partitions_store=instance)
            statuses = instance.get_status_by_partition(key, keys, partitions) or {}
            values = [s.value if s else "MISSING" for s in statuses.values()]
            done = [k for k, s in statuses.items() if s == dg.AssetPartitionStatus.MATERIALIZED]
            row.update(
                partitions=len(keys),
                materialized=values.count("MATERIALIZED"),
                failed=values.count("FAILED"),
                in_progress=values.count("IN_PROGRESS"),
                missing=values.count("MISSING"),
                latest_partition=max(done) if done else "",
            )
        row["materialized_at"] = shanghai_time(record.timestamp) if record else ""
        rows.append(row)
    return pd.DataFrame(rows)


def check_status(
    defs: dg.Definitions, instance: dg.DagsterInstance, history: int = 20
) -> pd.DataFrame:
    """The last completed evaluation of every asset check, sorted by check name.

    A check planned in a run still in flight shows its previous result, marked `(running)`;
    one whose latest run ended before evaluating it, marked `(not executed in the last run)`.
    """
    rows = []
    storage = instance.event_log_storage
    for check_key in defs.resolve_asset_graph().asset_check_keys:
        records = storage.get_asset_check_execution_history(check_key, limit=history)
        pending = records[0] if records and records[0].status.value not in _COMPLETED else None
        pending_run = instance.get_run_by_id(pending.run_id) if pending else None
        completed = next(
            (
                r
                for r in records
                if r.status.value in _COMPLETED
                and isinstance(r.evaluation, dg.AssetCheckEvaluation)
            ),
            None,
        )
        evaluation = completed.evaluation if completed else None
        if evaluation is None:
            result = "not run"
        elif evaluation.passed:
            result = "PASSED"
        else:
            result = f"FAILED ({evaluation.severity.value})"
        if pending_run is not None:
            result += (
                " (running)" if not pending_run.is_finished else " (not executed in the last run)"
            )
        failed = evaluation is not None and not evaluation.passed
        rows.append(
            {
                "check": f"{check_key.asset_key.to_user_string()}:{check_key.name}",
                "result": result,
                # The check's one-line description names the offending days / codes.
                "detail": _shorten(evaluation.description or "") if failed and evaluation else "",
            }
        )
    frame = pd.DataFrame(rows, columns=["check", "result", "detail"])
    return frame.sort_values("check", ignore_index=True)


def _shorten(text: str, width: int = 100) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def show_status(settings: Settings) -> None:
    """Read-only: no warehouse, directory or Dagster instance is created (a missing one is said)."""
    from stocksync_dagster.definitions import defs

    warehouse = Warehouse(settings.database_url)
    with warehouse.read_only() as connection:
        failures = failure_summary(connection)
    instance = existing_instance()
    if instance is None:
        click.echo(f"Dagster instance: none yet at {instance_location()} (nothing has run here)")
        instance = dg.DagsterInstance.ephemeral()
    else:
        click.echo(f"Dagster instance: {instance.root_directory}   (times in {SHOWN_TIMEZONE})")
    click.echo("")
    click.echo(partition_status(defs, instance).to_string(index=False))
    checks = check_status(defs, instance)
    if len(checks):
        click.echo("")
        click.echo(checks.to_string(index=False))
    click.echo("")
    if failures.empty:
        click.echo(f"sync failures: none ({warehouse.safe_url})")
    else:
        click.echo(f"sync failures ({warehouse.safe_url}; `stocksync failures` lists them):")
        click.echo(failures.to_string(index=False))
