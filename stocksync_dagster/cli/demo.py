"""`stocksync demo`: a real Dagster materialization of every asset from the offline demo source."""

from __future__ import annotations

import time

import click

from stocksync_dagster.cli.instance import open_instance
from stocksync_dagster.cli.runs import (
    QUIET,
    first_failure,
    materialize_range,
    materialize_unpartitioned,
)
from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.errors import StocksyncError
from stocksync_dagster.core.settings import Settings
from stocksync_dagster.core.warehouse import Warehouse
from stocksync_dagster.core.warehouse.queries import table_summary
from stocksync_dagster.resources import DemoSourceResource, build_warehouse_resource


def run_demo(settings: Settings, days: int, stocks: int) -> None:
    from stocksync_dagster.definitions import defs

    instance = open_instance()
    end = trading_calendar.last_settled_trading_day()
    trading = trading_calendar.trading_days(settings.start_date, end)
    if not trading:
        raise StocksyncError(
            f"STOCKSYNC_START_DATE {settings.start_date} leaves no trading day to sync"
        )
    start = trading[-min(days, len(trading))]
    resources = {
        "source": DemoSourceResource(stocks=stocks),
        "warehouse": build_warehouse_resource(settings),
    }
    tags = {"stocksync/trigger": "demo"}
    click.echo(
        f"demo: {stocks} synthetic stocks, {start}..{end}, "
        f"warehouse {Warehouse(settings.database_url).safe_url}"
    )
    click.echo(f"      Dagster instance: {instance.root_directory}")
    began = time.monotonic()
    results = [
        materialize_unpartitioned(defs, instance, resources=resources, tags=tags, log_level=QUIET),
        materialize_range(
            defs, instance, start, end, resources=resources, tags=tags, log_level=QUIET
        ),
    ]
    elapsed = time.monotonic() - began
    for result in results:
        if not result.success:
            raise StocksyncError(f"demo run {result.run_id} failed: {first_failure(result)}")
    warehouse = Warehouse(settings.database_url)
    with warehouse.connect() as connection:
        summary = table_summary(connection)
    click.echo("")
    click.echo(summary.fillna("").to_string(index=False))
    checks = [e for r in results for e in r.get_asset_check_evaluations()]
    if checks:
        click.echo("")
        for evaluation in checks:
            mark = "PASS" if evaluation.passed else "FAIL"
            click.echo(
                f"  [{mark}] {evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
            )
    passed = sum(e.passed for e in checks)
    click.echo("")
    click.echo(
        f"done in {elapsed:.1f}s: runs {', '.join(r.run_id[:8] for r in results)}; "
        f"checks {passed}/{len(checks)} passed"
    )
    click.echo("Browse it: STOCKSYNC_SOURCE=demo stocksync ui   (then open http://127.0.0.1:3000)")
    if passed < len(checks):
        raise StocksyncError("some asset checks failed: see the list above")
