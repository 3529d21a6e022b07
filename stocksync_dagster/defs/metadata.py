"""Metadata a person reads in the UI: table schemas, previews, each partition's own figures.

A range run materializes every partition of the range in one step. Each partition's event
carries its own day's figures (`dagster/row_count`, `market_open`, failures); figures of the
whole run are prefixed `run_` and described by `run_scope`, so no partition shows the range's
totals as its own.

Dagster builds, checks, serializes and stores every metadata entry of every partition's event,
so in a long range run (a backfill, more than MAX_DETAILED_PARTITIONS partitions) the heavy,
repeated parts are on the run's last partition only: the 10-row `preview` table and the run's
figures (`run_*`). The other partitions keep all of their own day's figures and a `run_scope`
naming the partition that carries the run's. Runs of up to MAX_DETAILED_PARTITIONS partitions
(the nightly run, its look-back, repairs) carry both on every partition.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Collection, Sequence
from typing import Any

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from stocksync_dagster.core.sources.base import RejectedRow
from stocksync_dagster.core.sync import PREVIEW_DAYS, DayFigures, SyncReport
from stocksync_dagster.core.warehouse import UpsertStats

PREVIEW_ROWS = 10
MAX_LISTED = 50
MAX_DAYS_TABLED = 31  # the run's per-day table: keep a year's run light
MAX_DETAILED_PARTITIONS = PREVIEW_DAYS
"""Runs of up to this many partitions carry a preview and the run's figures on every partition;
longer runs on their last partition only (see the module docstring)."""
ROW_COUNT = "dagster/row_count"


def _column_type(column: sa.Column) -> str:
    return str(column.type).lower()


def table_schema(table: sa.Table) -> dg.TableSchema:
    """The UI's column schema of a warehouse table, read from its SQLAlchemy definition."""
    primary_key = [c.name for c in table.primary_key.columns]
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=column.name,
                type=_column_type(column),
                description=column.comment,
                constraints=dg.TableColumnConstraints(
                    nullable=bool(column.nullable),
                    unique=primary_key == [column.name],
                ),
            )
            for column in table.columns
        ],
        constraints=dg.TableConstraints(other=[f"primary key ({', '.join(primary_key)})"]),
    )


def table_metadata(table: sa.Table) -> dict[str, Any]:
    """Asset definition metadata: the table's name and column schema (shown before any run)."""
    return {
        "dagster/table_name": table.name,
        "dagster/column_schema": table_schema(table),
    }


def _plain(value: object) -> str | int | float | bool | None:
    """A cell the UI shows as written: ISO dates, plain numbers, no NaN."""
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (dt.date, pd.Timestamp)):
        return value.isoformat()
    if isinstance(value, bool):
        return value
    if hasattr(value, "item"):  # numpy scalars
        return _plain(value.item())
    if isinstance(value, (int, float, str)):
        return value
    return str(value)


def _dtype_name(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    if pd.api.types.is_float_dtype(series):
        return "float"
    return "string"


def frame_table(frame: pd.DataFrame, schema: dg.TableSchema | None = None) -> dg.MetadataValue:
    """`frame` as a UI table; columns typed from `schema` where it names them."""
    if schema is None:
        schema = dg.TableSchema(
            columns=[dg.TableColumn(str(c), _dtype_name(frame[c])) for c in frame.columns]
        )
    known = {c.name: c for c in schema.columns}
    columns = [known.get(str(c), dg.TableColumn(str(c))) for c in frame.columns]
    records = [
        dg.TableRecord({str(k): _plain(v) for k, v in row.items()})
        for row in frame.to_dict(orient="records")
    ]
    return dg.MetadataValue.table(records, dg.TableSchema(columns=columns))


def preview(frame: pd.DataFrame, table: sa.Table, rows: int = PREVIEW_ROWS) -> dg.MetadataValue:
    """The first rows of `frame` as a UI table typed like the warehouse table."""
    return frame_table(frame.head(rows), table_schema(table))


def upsert_metadata(stats: UpsertStats, prefix: str = "") -> dict[str, int]:
    return {
        f"{prefix}rows_inserted": stats.inserted,
        f"{prefix}rows_updated": stats.updated,
        f"{prefix}rows_unchanged": stats.unchanged,
    }


def _listed(codes: Sequence[str]) -> str:
    codes = sorted(codes)
    more = f" (+{len(codes) - MAX_LISTED} more)" if len(codes) > MAX_LISTED else ""
    return ", ".join(codes[:MAX_LISTED]) + more


def _rejected_reasons(rejected: Sequence[RejectedRow]) -> dg.MetadataValue:
    reasons = pd.Series([r.reason for r in rejected]).value_counts()
    return frame_table(reasons.rename("rows").rename_axis("reason").reset_index())


def day_metadata(
    figures: DayFigures,
    report: SyncReport,
    day_rows: pd.DataFrame | None,
    schema: dg.TableSchema,
) -> dict[str, object]:
    """One partition's own figures; `day_rows` are (the first) fetched rows of that day, shown as
    its `preview` (None: no preview)."""
    metadata: dict[str, object] = {
        ROW_COUNT: figures.rows_stored,
        "trade_date": figures.day.isoformat(),
        "market_open": figures.market_open,
        "failed_stocks": len(figures.failed_codes),
        "suspended_stocks": report.suspended.get(figures.day, 0),
        "rejected_rows": len(figures.rejected),
        "revised_rows": report.revisions.get(figures.day, 0),
    }
    for label, rows in report.rows_by_source.get(figures.day, {}).items():
        metadata[f"rows_from_{label}"] = rows
    if report.codes:
        metadata["repaired_codes"] = _listed(report.codes)
        metadata["rows_repaired"] = figures.rows_fetched
    else:
        metadata["rows_fetched"] = figures.rows_fetched
    if not figures.market_open:
        metadata["note"] = (
            f"the source's calendar says the market was closed on {figures.day}: zero rows"
        )
    if figures.failed_codes:
        metadata["failed_codes"] = _listed(list(figures.failed_codes))
    if figures.rejected:
        metadata["rejected_reasons"] = _rejected_reasons(figures.rejected)
    if day_rows is not None and len(day_rows):
        metadata["preview"] = frame_table(day_rows.head(PREVIEW_ROWS), schema)
    return metadata


def partition_metadata(
    report: SyncReport,
    days: Sequence[dt.date],
    table: sa.Table,
    preview_days: Collection[dt.date] | None = None,
) -> dict[str, dict[str, object]]:
    """Per partition key (ISO day): that day's own metadata, with a preview on `preview_days`
    (None: every day)."""
    schema = table_schema(table)
    return {
        figures.day.isoformat(): day_metadata(
            figures,
            report,
            report.preview_rows(figures.day)
            if preview_days is None or figures.day in preview_days
            else None,
            schema,
        )
        for figures in report.breakdown(days)
    }


def range_metadata(
    report: SyncReport, days: Sequence[dt.date], table: sa.Table
) -> dict[str, dict[str, object]]:
    """Per partition key (ISO day): the whole metadata of its materialization in this run.

    Every partition: its own day's figures. Up to MAX_DETAILED_PARTITIONS partitions: each also
    gets its preview and the run's figures. A longer run: only the last partition (the run's
    latest day, what the asset's page shows) gets them; the others get a `run_scope` naming it.
    """
    run = run_metadata(report, days)
    if len(days) <= MAX_DETAILED_PARTITIONS:
        return {key: {**own, **run} for key, own in partition_metadata(report, days, table).items()}
    last = days[-1]
    pointer = {
        "run_scope": f"{run['run_scope']}; the run's figures (run_*) and the preview are on "
        f"partition {last}"
    }
    return {
        key: {**own, **(run if key == last.isoformat() else pointer)}
        for key, own in partition_metadata(report, days, table, preview_days={last}).items()
    }


def run_metadata(report: SyncReport, days: Sequence[dt.date]) -> dict[str, object]:
    """Figures of the whole run (every partition of the range, plus any lookback days)."""
    seconds = report.seconds or report.fetch_seconds + report.write_seconds
    fetched = report.rows_per_day()
    per_day = pd.DataFrame(
        {
            "trade_date": [d.isoformat() for d in fetched.index],
            "rows_fetched": fetched.to_numpy(),
            "rows_stored": [report.stored_rows.get(d, 0) for d in fetched.index],
        }
    )
    scope = f"run {days[0]}..{days[-1]} ({len(days)} partitions)"
    if report.start < days[0]:
        scope += f", re-fetched from {report.start}"
    metadata: dict[str, object] = {
        "run_scope": scope,
        "run_rows_fetched": report.rows_fetched,
        "run_codes": len(report.fetched_codes),
        "run_open_days": len(report.open_days),
        "run_first_day": str(report.start),
        "run_last_day": str(report.end),
        **upsert_metadata(report.stats, prefix="run_"),
        "run_rows_revised": report.stats.revised,
        "run_failed_stocks": len(report.failed_codes),
        "run_failed_days": len(report.failed_days),
        "run_failure_rows_recorded": report.failure_rows,
        "run_failures_resolved": report.resolved_rows,
        "run_rejected_rows": len(report.rejected),
        **{f"run_rows_from_{label}": rows for label, rows in report.run_rows_by_source.items()},
        "run_source_calls": report.calls,
        "run_fetch_seconds": round(report.fetch_seconds, 3),
        "run_write_seconds": round(report.write_seconds, 3),
        "run_seconds": round(report.seconds, 3),
        "run_chunks": report.chunks,
        "run_rows_per_second": round(report.rows_fetched / seconds) if seconds > 0 else 0,
    }
    if len(per_day) <= MAX_DAYS_TABLED:
        metadata["run_rows_per_day"] = frame_table(per_day)
    if report.rejected:
        metadata["run_rejected_reasons"] = _rejected_reasons(report.rejected)
    return metadata
