"""`stocksync demo`: the `reference_sync` then `market_sync` jobs on the offline demo source."""

from __future__ import annotations

import time

import click
import pandas as pd

from stocksync_dagster.cli.instance import open_instance
from stocksync_dagster.cli.runs import print_checks, require_success, run_job
from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.errors import StocksyncError
from stocksync_dagster.core.settings import Settings
from stocksync_dagster.core.warehouse import Warehouse
from stocksync_dagster.core.warehouse.queries import table_summary

DEMO_JOBS = ("reference_sync", "market_sync")


def demo_run_config(stocks: int) -> dict[str, object]:
    """Run config sizing the definitions' own demo `source` resource."""
    return {"resources": {"source": {"config": {"stocks": stocks}}}}


def format_summary(summary: pd.DataFrame) -> str:
    """The table summary with whole numbers as integers and blanks for what does not apply."""
    frame = summary.copy()
    for column in ("rows", "days"):
        frame[column] = frame[column].astype("Int64")
    return frame.astype(object).where(frame.notna(), "").to_string(index=False)


def run_demo(settings: Settings, days: int, stocks: int) -> None:
    from stocksync_dagster.definitions import defs
    from stocksync_dagster.defs.market.jobs import TRIGGER_TAG, range_tags

    end = trading_calendar.last_settled_trading_day()
    trading = trading_calendar.trading_days(settings.start_date, end)
    if not trading:
        raise StocksyncError(
            f"STOCKSYNC_START_DATE {settings.start_date} leaves no trading day to sync"
        )
    start = trading[-min(days, len(trading))]
    instance = open_instance()
    click.echo(
        f"demo: {stocks} synthetic stocks, {start}..{end}, "
        f"warehouse {Warehouse(settings.database_url).safe_url}"
    )
    click.echo(f"      Dagster instance: {instance.root_directory}")
    run_config = demo_run_config(stocks)
    tags = {TRIGGER_TAG: "demo"}
    began = time.monotonic()
    outcomes = []
    for job_name in DEMO_JOBS:
        job_tags = (
            tags
            if job_name == "reference_sync"
            else {**tags, **range_tags(start.isoformat(), end.isoformat())}
        )
        outcome = run_job(
            defs, instance, job_name, click.echo, tags=job_tags, run_config=run_config
        )
        require_success(outcome)
        outcomes.append(outcome)
    elapsed = time.monotonic() - began
    with Warehouse(settings.database_url).connect() as connection:
        summary = table_summary(connection)
    click.echo("")
    click.echo(format_summary(summary))
    click.echo("")
    passed, evaluated = print_checks(outcomes, click.echo)
    click.echo("")
    click.echo(
        f"done in {elapsed:.1f}s: runs "
        f"{', '.join(f'{o.job_name} {o.run_id[:8]}' for o in outcomes)}; "
        f"checks {passed}/{evaluated} passed"
    )
    click.echo("Browse it: STOCKSYNC_SOURCE=demo stocksync ui   (then open http://127.0.0.1:3000)")
    if passed < evaluated:
        raise StocksyncError("some asset checks failed: see the list above")
