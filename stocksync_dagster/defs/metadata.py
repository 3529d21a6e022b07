"""Materialization metadata: counts, rates and previews a person reads in the UI."""

from __future__ import annotations

import dagster as dg
import pandas as pd

from stocksync_dagster.core.sync import SyncReport
from stocksync_dagster.core.warehouse import UpsertStats

PREVIEW_ROWS = 10
MAX_LISTED = 50


def preview(frame: pd.DataFrame, rows: int = PREVIEW_ROWS) -> dg.MetadataValue:
    return dg.MetadataValue.md(
        frame.head(rows).to_markdown(index=False) if len(frame) else "(no rows)"
    )


def upsert_metadata(stats: UpsertStats) -> dict[str, int]:
    return {
        "rows_inserted": stats.inserted,
        "rows_updated": stats.updated,
        "rows_unchanged": stats.unchanged,
    }


def sync_metadata(report: SyncReport) -> dict[str, object]:
    frame = report.frame
    seconds = report.fetch_seconds + report.write_seconds
    per_day = report.rows_per_day().rename("rows").rename_axis("trade_date").reset_index()
    metadata: dict[str, object] = {
        "rows": len(frame),
        "codes": int(frame["code"].nunique()) if len(frame) else 0,
        "days": len(report.open_days),
        "first_day": str(report.start),
        "last_day": str(report.end),
        "market_open": report.market_open,
        **upsert_metadata(report.stats),
        "failed_stocks": len(report.failed_codes),
        "failed_days": len(report.failed_days),
        "failure_rows_recorded": report.failure_rows,
        "failures_resolved": report.resolved_rows,
        "rejected_rows": len(report.rejected),
        "source_calls": report.calls,
        "fetch_seconds": round(report.fetch_seconds, 3),
        "write_seconds": round(report.write_seconds, 3),
        "rows_per_second": round(len(frame) / seconds) if seconds > 0 else 0,
        "rows_per_day": dg.MetadataValue.md(per_day.to_markdown(index=False)),
        "preview": preview(frame),
    }
    if not report.market_open:
        metadata["note"] = "the source's calendar says the market was closed: zero rows"
    if report.failed_codes:
        metadata["failed_codes"] = ", ".join(sorted(report.failed_codes)[:MAX_LISTED])
    if report.rejected:
        reasons = pd.Series([r.reason for r in report.rejected]).value_counts()
        metadata["rejected_reasons"] = dg.MetadataValue.md(
            reasons.rename("rows").rename_axis("reason").reset_index().to_markdown(index=False)
        )
    return metadata
