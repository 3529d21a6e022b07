"""Cross-source reconciliation: with a second source configured, sampled rows are compared.

One step evaluates both checks (bars and factor jumps) on one sample, after the run's
materializations; with one source they pass, saying there is nothing to compare.
"""

from collections.abc import Iterator
from typing import Literal

import dagster as dg
import pydantic

from stocksync_dagster.checks.reconcile import (
    ReconcileSettings,
    evaluate_reconciliation,
    no_second_source,
)
from stocksync_dagster.checks.scope import run_scope
from stocksync_dagster.core import reconcile
from stocksync_dagster.defs.market.checks import ADJ_FACTOR, DAILY_BARS
from stocksync_dagster.defs.policies import SOURCE_POOL
from stocksync_dagster.resources import MarketSourceResource, WarehouseResource

CHECK_NAME = "agrees_with_second_source"


class ReconcileConfig(dg.Config):
    """Settings of the cross-source reconciliation (editable in the Launchpad)."""

    sample_size: int = pydantic.Field(default=reconcile.DEFAULT_SAMPLE_SIZE, ge=1, le=10_000)
    """(code, day) pairs compared per run; the days' limit-up/down and ex-right stocks are
    always compared, on top if they are more."""
    max_days: int = pydantic.Field(default=reconcile.DEFAULT_MAX_DAYS, ge=1, le=250)
    """Days of the run compared: all of them up to this many, else the last day and a
    deterministic random choice of the others (the whole history: the latest days)."""
    rel_tol_ppm: float = pydantic.Field(default=reconcile.DEFAULT_REL_TOL * 1e6, gt=0, le=1e5)
    """Relative tolerance of a value (bars) or of a factor jump (factors), in parts per
    million: 1.0 = 1e-6 (a number YAML reads as a number in the Launchpad)."""
    severity: Literal["WARN", "ERROR"] = "WARN"
    """Severity of a disagreement (ERROR: it alerts like the other failed checks)."""


_DESCRIPTION = (
    "With STOCKSYNC_SOURCE=primary,fallback: {what} of sampled (code, day) pairs (default 50 per "
    "run, always the day's limit-up/down and ex-right stocks) agree with the other source "
    "(relative tolerance 1e-6). Disagreements are stored in table source_disagreement and "
    "named here; WARN by default (config `severity`). Passes when only one source is configured."
)


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(
            CHECK_NAME,
            asset=DAILY_BARS,
            additional_deps=["stock_basic", ADJ_FACTOR],
            description=_DESCRIPTION.format(what="Raw open, high, low, close, volume and amount"),
        ),
        dg.AssetCheckSpec(
            CHECK_NAME,
            asset=ADJ_FACTOR,
            additional_deps=[DAILY_BARS],
            description=_DESCRIPTION.format(
                what="Factor jumps (factor over the previous trading day's, since sources scale "
                "cumulative factors differently)"
            ),
        ),
    ],
    can_subset=True,
    pool=SOURCE_POOL,
)
def second_source_checks(
    context: dg.AssetCheckExecutionContext,
    config: ReconcileConfig,
    source: MarketSourceResource,
    warehouse: WarehouseResource,
) -> Iterator[dg.AssetCheckResult]:
    """Compare a sample of the run's rows with the second source; store what disagrees."""
    scope = run_scope(context)
    keys = {
        "bars": dg.AssetCheckKey(DAILY_BARS, CHECK_NAME),
        "factors": dg.AssetCheckKey(ADJ_FACTOR, CHECK_NAME),
    }
    wanted = {name: key in context.selected_asset_check_keys for name, key in keys.items()}
    other = source.second_source
    if other is None:
        for name, key in keys.items():
            if wanted[name]:
                yield no_second_source(scope)._replace(asset_key=key.asset_key, check_name=key.name)
        return
    settings = ReconcileSettings(
        sample_size=config.sample_size,
        max_days=config.max_days,
        rel_tol=config.rel_tol_ppm / 1e6,
        severity=dg.AssetCheckSeverity[config.severity],
    )
    results = evaluate_reconciliation(
        warehouse.get(),
        other,
        scope,
        settings,
        context.run.run_id,
        wanted["bars"],
        wanted["factors"],
    )
    for key, found in zip(keys.values(), results, strict=True):
        if found is not None:
            yield found._replace(asset_key=key.asset_key, check_name=key.name)
