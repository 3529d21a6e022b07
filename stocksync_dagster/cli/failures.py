"""`stocksync failures`: the failure desk (补拉) over `sync_failure`: list, export, re-queue."""

from __future__ import annotations

import json

import click
import pandas as pd

from stocksync_dagster.core.settings import Settings
from stocksync_dagster.core.warehouse import Warehouse
from stocksync_dagster.core.warehouse.failures import (
    FailureFilter,
    count_failures,
    list_failures,
    open_failures,
    reopen_failures,
)

FORMATS = ("table", "csv", "json")
RETRY_COMMAND = "stocksync failures retry"
_TIME_COLUMNS = ("first_attempt_at", "last_attempt_at", "resolved_at")


def format_page(frame: pd.DataFrame, fmt: str) -> str:
    """One page of rows as an aligned table, CSV (with header) or a JSON array."""
    frame = frame.copy()
    frame["trade_date"] = frame["trade_date"].astype(str)
    for column in _TIME_COLUMNS:
        frame[column] = [
            "" if pd.isna(v) else pd.Timestamp(v).isoformat(timespec="seconds")
            for v in frame[column]
        ]
    if fmt == "csv":
        return frame.to_csv(index=False).rstrip("\n")
    if fmt == "json":
        return json.dumps(frame.to_dict(orient="records"), ensure_ascii=False, indent=2)
    shown = frame.drop(columns=["first_attempt_at", "resolved_at"])
    shown["error"] = [e if len(e) <= 60 else e[:59] + "…" for e in shown["error"]]
    return shown.to_string(index=False)


def show_failures(
    settings: Settings, where: FailureFilter, page: int, page_size: int, fmt: str
) -> None:
    """Print one page of matching rows, newest first; read-only (nothing is created)."""
    warehouse = Warehouse(settings.database_url)
    with warehouse.read_only() as connection:
        total = count_failures(connection, where)
        frame = list_failures(connection, where, page, page_size)
    pages = max(1, -(-total // page_size))
    if fmt != "table":
        click.echo(format_page(frame, fmt))  # an empty page: the CSV header, or []
        return
    if frame.empty:
        click.echo(f"no sync failures match (page {page} of {pages}, {total} rows)")
        return
    click.echo(format_page(frame, fmt))
    click.echo("")
    click.echo(
        f"page {page} of {pages} ({total} rows, newest first); `{RETRY_COMMAND}` with the same "
        "filters re-queues the unresolved ones"
    )


def retry_failures(settings: Settings, where: FailureFilter, now: bool) -> None:
    """Re-open matching rows (abandoned too) as `pending`; with `now`, launch the repair runs."""
    warehouse = Warehouse(settings.database_url)
    with warehouse.read_only():
        pass  # a missing warehouse is an error here too, not a new empty database
    with warehouse.begin() as connection:
        reopened = reopen_failures(connection, where)
    click.echo(
        f"re-opened {reopened} sync_failure row(s) as pending"
        + ("" if now or not reopened else "; the repair sensor requests them within 5 minutes")
    )
    if now and reopened:
        launch_repairs(settings, warehouse)


def launch_repairs(settings: Settings, warehouse: Warehouse) -> None:
    """The repair sensor's runs for every open failure, launched now (queued under a daemon)."""
    from stocksync_dagster.cli.instance import open_instance
    from stocksync_dagster.cli.runs import run_job
    from stocksync_dagster.definitions import defs
    from stocksync_dagster.defs.market.jobs import market_sync
    from stocksync_dagster.defs.market.repair import busy_repair_assets, repair_requests

    with warehouse.connect() as connection:
        frame = open_failures(connection)
    instance = open_instance()
    requests = repair_requests(frame, busy_repair_assets(instance), limit=len(frame))
    if not requests:
        click.echo("repair runs for these assets are already queued or running")
        return
    failed = 0
    for request in requests:
        outcome = run_job(
            defs,
            instance,
            market_sync.name,
            click.echo,
            tags=request.tags,
            run_config=request.run_config,
            assets=[key.to_user_string() for key in request.asset_selection or []],
        )
        click.echo(f"repair run {outcome.run_id}: {outcome.status.value}")
        failed += not outcome.success
    if failed:
        raise click.ClickException(f"{failed} of {len(requests)} repair runs failed")
