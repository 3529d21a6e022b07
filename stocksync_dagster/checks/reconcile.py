"""Does the warehouse agree with the second source? Sampled bars and factor jumps compared."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from stocksync_dagster.checks.report import capped, rerun_hint
from stocksync_dagster.checks.scope import Scope
from stocksync_dagster.core import reconcile
from stocksync_dagster.core.errors import StocksyncError
from stocksync_dagster.core.sources.base import MarketSource
from stocksync_dagster.core.warehouse import Warehouse, schema

PREVIEW_ROWS = 30


@dataclass(frozen=True)
class ReconcileSettings:
    """What to compare: pairs per run, days per run, tolerance, severity of a disagreement."""

    sample_size: int = reconcile.DEFAULT_SAMPLE_SIZE
    max_days: int = reconcile.DEFAULT_MAX_DAYS
    rel_tol: float = reconcile.DEFAULT_REL_TOL
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.WARN


def no_second_source(scope: Scope) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=True,
        description="no second source: STOCKSYNC_SOURCE names one source, nothing to compare",
        metadata={"scope": scope.label, "other_source": "none"},
    )


def evaluate_reconciliation(
    warehouse: Warehouse,
    other: MarketSource,
    scope: Scope,
    settings: ReconcileSettings,
    run_id: str | None,
    bars: bool,
    factors: bool,
) -> tuple[dg.AssetCheckResult | None, dg.AssetCheckResult | None]:
    """(bars result, factors result), each None when not asked for."""
    with warehouse.connect() as connection:
        days = _days_in(connection, scope, settings.max_days)
        seed = f"{days[0]}..{days[-1]}" if days else "empty"
        chosen = reconcile.choose_days(days, settings.max_days, seed)
        sample = reconcile.sample_pairs(connection, chosen, settings.sample_size, other.label, seed)
        try:
            found_bars = (
                reconcile.compare_bars(connection, other, sample, settings.rel_tol)
                if bars
                else None
            )
            found_factors = (
                reconcile.compare_factors(connection, other, sample, settings.rel_tol)
                if factors
                else None
            )
        except StocksyncError as exc:
            down = _unreachable(other.label, exc, scope, settings)
            return (down if bars else None), (down if factors else None)
    now = dt.datetime.now(dt.UTC)
    with warehouse.begin() as connection:
        for found, fields in (
            (found_bars, (*reconcile.BAR_FIELDS, "bar")),
            (found_factors, reconcile.FACTOR_FIELDS),
        ):
            if found is not None:
                reconcile.store_disagreements(connection, found, fields, run_id, now)
    return (
        _result(found_bars, "bars", sample, chosen, scope, settings) if found_bars else None,
        _result(found_factors, "factor jumps", sample, chosen, scope, settings)
        if found_factors
        else None,
    )


def _days_in(connection: sa.Connection, scope: Scope, max_days: int) -> list[dt.date]:
    """Days with bars in the scope; the latest `max_days` of them for the whole history."""
    bar = schema.daily_bar
    query = sa.select(bar.c.trade_date).distinct()
    if scope.start is not None:
        query = query.where(bar.c.trade_date >= scope.start)
    if scope.end is not None:
        query = query.where(bar.c.trade_date <= scope.end)
    if scope.start is None and scope.end is None:
        query = query.order_by(bar.c.trade_date.desc()).limit(max_days)
    days = [
        d if isinstance(d, dt.date) else dt.date.fromisoformat(str(d)[:10])
        for (d,) in connection.execute(query)
    ]
    return sorted(days)


def _result(
    found: reconcile.Comparison,
    what: str,
    sample: reconcile.Sample,
    days: list[dt.date],
    scope: Scope,
    settings: ReconcileSettings,
) -> dg.AssetCheckResult:
    wrong = found.disagreements
    metadata: dict[str, Any] = {
        "scope": scope.label,
        "other_source": found.other_source,
        "days_checked": capped(days),
        "sampled_pairs": sample.size,
        "limit_or_ex_right_pairs": len(sample.notable),
        "compared_pairs": len(found.compared),
        "unchecked_pairs": len(found.unchecked),
        "disagreements": len(wrong),
        "rel_tol": settings.rel_tol,
    }
    if found.unchecked:
        metadata["unchecked"] = capped(found.unchecked, 10)
    if wrong:
        metadata["disagreeing"] = capped(f"{d.code} {d.trade_date} {d.field}" for d in wrong)
        metadata["disagreement_table"] = _table(reconcile.disagreement_frame(wrong))
        metadata["rerun"] = rerun_hint(d.trade_date for d in wrong)
        first = wrong[0]
        description = (
            f"{len(wrong)} value(s) of {len(found.compared)} sampled pairs disagree with "
            f"{found.other_source}, e.g. {first.code} {first.trade_date} {first.field}: "
            f"{first.primary_value} here, {first.other_value} there (table source_disagreement)"
        )
        return dg.AssetCheckResult(
            passed=False, severity=settings.severity, description=description, metadata=metadata
        )
    return dg.AssetCheckResult(
        passed=True,
        description=(
            f"{len(found.compared)} sampled pairs' {what} agree with {found.other_source}"
            + (f" ({len(found.unchecked)} could not be fetched)" if found.unchecked else "")
        ),
        metadata=metadata,
    )


def _unreachable(
    label: str, exc: StocksyncError, scope: Scope, settings: ReconcileSettings
) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=False,
        severity=settings.severity,
        description=f"could not compare with {label}: {str(exc).splitlines()[0]}",
        metadata={"scope": scope.label, "other_source": label},
    )


def _table(frame: pd.DataFrame) -> dg.MetadataValue:
    head = frame.head(PREVIEW_ROWS)
    records = [
        dg.TableRecord(
            {
                k: (v.isoformat() if isinstance(v, dt.date) else (None if pd.isna(v) else v))
                for k, v in row.items()
            }
        )
        for row in head.to_dict(orient="records")
    ]
    columns = [
        dg.TableColumn("code", "string"),
        dg.TableColumn("trade_date", "date"),
        dg.TableColumn("field", "string"),
        dg.TableColumn("primary_value", "float"),
        dg.TableColumn("other_value", "float"),
        dg.TableColumn("primary_source", "string"),
        dg.TableColumn("other_source", "string"),
    ]
    return dg.MetadataValue.table(records, dg.TableSchema(columns=columns))
