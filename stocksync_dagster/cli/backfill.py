"""`stocksync backfill START END`: one single-run range materialization on the Dagster instance."""

from __future__ import annotations

import datetime as dt
import time

import click

from stocksync_dagster.cli.instance import open_instance
from stocksync_dagster.cli.runs import first_failure, materialize_range
from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.errors import ConfigError, StocksyncError
from stocksync_dagster.core.settings import Settings
from stocksync_dagster.core.warehouse import Warehouse


def run_backfill(settings: Settings, start: dt.date, end: dt.date, assets: list[str]) -> None:
    from stocksync_dagster.definitions import defs
    from stocksync_dagster.defs.market.partitions import trading_days

    if settings.source == "tushare" and not settings.tushare_tokens:
        raise ConfigError("TUSHARE_TOKEN", "not set", "required for STOCKSYNC_SOURCE=tushare")
    if start > end:
        raise ConfigError("START", f"{start} is after END {end}")
    if start < settings.start_date:
        raise ConfigError(
            "START",
            f"{start} is before STOCKSYNC_START_DATE {settings.start_date}",
            "set STOCKSYNC_START_DATE earlier to include it",
        )
    latest = trading_calendar.last_settled_trading_day()
    end = min(end, latest)
    keys = trading_days.get_partition_keys()
    in_range = [k for k in keys if start.isoformat() <= k <= end.isoformat()]
    if not in_range:
        raise ConfigError("START/END", f"no trading-day partition between {start} and {end}")
    Warehouse(settings.database_url).ensure_schema()  # an unreachable database: one clear line
    instance = open_instance()
    click.echo(
        f"backfill {', '.join(assets)}: {in_range[0]}..{in_range[-1]} "
        f"({len(in_range)} trading days) from {settings.source}"
    )
    began = time.monotonic()
    result = materialize_range(
        defs,
        instance,
        dt.date.fromisoformat(in_range[0]),
        dt.date.fromisoformat(in_range[-1]),
        assets=assets,
        tags={"stocksync/trigger": "cli-backfill"},
    )
    if not result.success:
        raise StocksyncError(f"backfill run {result.run_id} failed: {first_failure(result)}")
    click.echo(f"done in {time.monotonic() - began:.1f}s (run {result.run_id})")
