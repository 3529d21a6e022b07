"""`stocksync backfill START END`: range runs of the `market_sync` job on the instance.

A range longer than MAX_PARTITIONS_PER_RUN trading days runs as consecutive runs of at most
that many partitions (the assets' backfill policy), one after the other: a crash or a failure
costs at most one run, and the message names the range still to load.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence

import click

from stocksync_dagster.cli.instance import open_instance
from stocksync_dagster.cli.runs import print_checks, require_success, run_job
from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.errors import ConfigError
from stocksync_dagster.core.settings import Settings
from stocksync_dagster.core.warehouse import Warehouse

BACKFILL_JOB = "market_sync"


def backfill_assets(requested: Sequence[str]) -> list[str]:
    """The requested market assets (all of them when none is named), validated against the job."""
    from stocksync_dagster.defs.market.jobs import market_asset_names

    valid = market_asset_names()
    unknown = [a for a in requested if a not in valid]
    if unknown:
        raise ConfigError(
            "--asset",
            f"unknown asset {', '.join(repr(a) for a in unknown)}",
            f"{BACKFILL_JOB} backfills {', '.join(valid)}",
        )
    return [a for a in valid if a in requested] if requested else list(valid)


def settled_range(
    start: dt.date, end: dt.date, settings: Settings, latest: dt.date | None = None
) -> tuple[dt.date, dt.date, str]:
    """[start, end] clipped to the settled days, with a note when END was cut."""
    latest = latest or trading_calendar.last_settled_trading_day()
    if start > end:
        raise ConfigError("START", f"{start} is after END {end}")
    if start < settings.start_date:
        raise ConfigError(
            "START",
            f"{start} is before STOCKSYNC_START_DATE {settings.start_date}",
            "set STOCKSYNC_START_DATE earlier to include it",
        )
    settles = f"a day settles at {trading_calendar.CLOSE_SETTLED_HOUR}:00 Asia/Shanghai"
    if start > latest:
        raise ConfigError(
            "START",
            f"{start} is after the last settled trading day {latest}: nothing to load yet",
            settles,
        )
    if end > latest:
        note = (
            f"note: END {end} is after the last settled trading day {latest} ({settles}); "
            f"loading up to {latest}"
        )
        return start, latest, note
    return start, end, ""


def run_backfill(settings: Settings, start: dt.date, end: dt.date, assets: Sequence[str]) -> None:
    from stocksync_dagster.definitions import defs
    from stocksync_dagster.defs.market.jobs import TRIGGER_TAG, range_tags
    from stocksync_dagster.defs.market.partitions import trading_days
    from stocksync_dagster.defs.policies import MAX_PARTITIONS_PER_RUN

    selected = backfill_assets(assets)
    if settings.uses_tushare and not settings.tushare_tokens:
        raise ConfigError("TUSHARE_TOKEN", "not set", "required for STOCKSYNC_SOURCE=tushare")
    start, end, note = settled_range(start, end, settings)
    if note:
        click.echo(note)
    keys = trading_days.get_partition_keys()
    in_range = [k for k in keys if start.isoformat() <= k <= end.isoformat()]
    if not in_range:
        raise ConfigError("START/END", f"no trading day between {start} and {end}")
    Warehouse(settings.database_url).ensure_schema()  # an unreachable database: one clear line
    instance = open_instance()
    click.echo(
        f"backfill {', '.join(selected)}: {in_range[0]}..{in_range[-1]} "
        f"({len(in_range)} trading days) from {settings.source}, job {BACKFILL_JOB}"
    )
    began = time.monotonic()
    chunks = partition_chunks(in_range, MAX_PARTITIONS_PER_RUN)
    outcomes = []
    for number, chunk in enumerate(chunks, 1):
        if len(chunks) > 1:
            days = f"{len(chunk)} trading day{'s' if len(chunk) > 1 else ''}"
            click.echo(f"run {number}/{len(chunks)}: {chunk[0]}..{chunk[-1]} ({days})")
        outcome = run_job(
            defs,
            instance,
            BACKFILL_JOB,
            click.echo,
            tags={TRIGGER_TAG: "cli-backfill", **range_tags(chunk[0], chunk[-1])},
            assets=None if selected == backfill_assets(()) else selected,
            log_level="INFO",  # a long history load shows the sources' progress as it goes
        )
        outcomes.append(outcome)
        if not outcome.success and number < len(chunks):
            click.echo(
                f"stopping: {chunk[0]}..{chunk[-1]} failed; {chunk[0]}..{in_range[-1]} is still "
                f"to load: `stocksync backfill {chunk[0]} {in_range[-1]}`"
            )
            break
    passed, evaluated = print_checks(outcomes, click.echo)
    for outcome in outcomes:
        require_success(outcome)
    runs = (
        f"run {outcomes[0].run_id} ({BACKFILL_JOB})"
        if len(outcomes) == 1
        else f"{len(outcomes)} runs of {BACKFILL_JOB} ({', '.join(o.run_id for o in outcomes)})"
    )
    click.echo(
        f"done in {time.monotonic() - began:.1f}s: {runs}; checks {passed}/{evaluated} passed"
    )


def partition_chunks(keys: Sequence[str], size: int) -> list[list[str]]:
    """`keys` in consecutive runs of at most `size` partitions (the backfill policy's bound)."""
    return [list(keys[i : i + size]) for i in range(0, len(keys), size)]
