"""`stocksync export`: daily bars to parquet or CSV files for research (read-only)."""

from __future__ import annotations

import click

from stocksync_dagster.core.export import ExportRequest, export_bars
from stocksync_dagster.core.settings import Settings
from stocksync_dagster.core.warehouse import Warehouse


def run_export(settings: Settings, request: ExportRequest) -> None:
    """Check the request, stream the rows to files, print one line per file and a total."""
    request.check()
    warehouse = Warehouse(settings.database_url)
    with warehouse.read_only() as connection:
        report = export_bars(connection, request)
    for exported in report.files:
        click.echo(f"{exported.path}: {exported.rows:,} rows")
    scope = f"{request.start}..{request.last_day}"
    if request.as_of and request.as_of < request.end:
        scope += f" (cut at --as-of {request.as_of})"
    if report.codes_without_rows:
        missing = ", ".join(report.codes_without_rows)
        click.echo(f"note: no rows for {missing} in {request.start}..{request.last_day}")
    click.echo(
        f"exported {report.rows:,} rows of {scope} ({request.adjust}) in {len(report.files)} "
        f"{request.fmt} file(s) to {request.out}; units and parameters in manifest.json"
    )
