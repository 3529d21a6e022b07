"""Check results a person can act on: capped lists, markdown tables, what to rerun."""

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

import dagster as dg
import pandas as pd

from stocksync_dagster.checks.scope import Scope

MAX_LISTED = 50
MAX_TABLE_ROWS = 30


def capped(values: Iterable[object], cap: int = MAX_LISTED) -> str:
    """`a, b, c … and 12 more`: metadata stays readable whatever the count."""
    items = [str(v) for v in values]
    text = ", ".join(items[:cap])
    return text + (f" … and {len(items) - cap} more" if len(items) > cap else "")


def md_table(frame: pd.DataFrame, cap: int = MAX_TABLE_ROWS) -> dg.MetadataValue:
    if frame.empty:
        return dg.MetadataValue.md("(none)")
    note = f"\n\nfirst {cap} of {len(frame)} rows" if len(frame) > cap else ""
    return dg.MetadataValue.md(frame.head(cap).to_markdown(index=False) + note)


def rerun_hint(days: Iterable[dt.date]) -> str:
    ordered = sorted(set(days))
    return (
        f"stocksync backfill {ordered[0]} {ordered[-1]}  "
        "(or materialize these partitions in the UI; re-runs are idempotent)"
    )


def result(
    passed: bool,
    description: str,
    scope: Scope | None = None,
    metadata: Mapping[str, Any] | None = None,
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
) -> dg.AssetCheckResult:
    """An `AssetCheckResult` whose description is the one line `stocksync status` prints."""
    extra: dict[str, Any] = {"scope": scope.label} if scope is not None else {}
    return dg.AssetCheckResult(
        passed=passed,
        severity=severity,
        description=description,
        metadata={**extra, **(metadata or {})},
    )
