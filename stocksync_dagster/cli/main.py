"""Entry point of the `stocksync` command."""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import click

from stocksync_dagster.core.errors import ConfigError, StocksyncError
from stocksync_dagster.core.settings import Settings
from stocksync_dagster.core.warehouse.engine import (
    WarehouseMissingError,
    WarehouseUnavailableError,
)
from stocksync_dagster.core.warehouse.failures import FailureFilter

FAILURE_FORMATS = ("table", "csv", "json")


def _settings() -> Settings:
    return Settings.from_env()


def quiet_dagster() -> None:
    """The one place the CLI silences Dagster's beta / preview / supersession warnings.

    They are about APIs this project chose (pools, `load_from_defs_folder`, ...), not something a
    user can act on. (The output of `dagster job launch` subprocesses is captured, not shown.)
    """
    import dagster as dg

    for category in (dg.BetaWarning, dg.PreviewWarning, dg.SupersessionWarning):
        warnings.filterwarnings("ignore", category=category)
    logging.getLogger("dagster").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


class IsoDate(click.ParamType):
    """A calendar date written YYYY-MM-DD."""

    name = "YYYY-MM-DD"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> dt.date:
        if isinstance(value, dt.date):
            return value
        try:
            return dt.date.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not a date written YYYY-MM-DD", param, ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="stocksync-dagster")
def cli() -> None:
    """Keep a SQL warehouse of China A-share data in sync, orchestrated by Dagster."""
    quiet_dagster()


@cli.command()
@click.option("--days", default=20, show_default=True, help="Recent trading days to load.")
@click.option("--stocks", default=300, show_default=True, help="Synthetic stocks in the market.")
def demo(days: int, stocks: int) -> None:
    """Materialize every asset from the offline demo source, run the checks, print a summary."""
    # Before anything imports the definitions: they are built from the environment once.
    os.environ["STOCKSYNC_SOURCE"] = "demo"
    from stocksync_dagster.cli.demo import run_demo

    run_demo(_settings(), days=days, stocks=stocks)


@cli.command()
def status() -> None:
    """Per asset: partitions materialized / missing / failed; open sync failures; checks."""
    from stocksync_dagster.cli.status import show_status

    show_status(_settings())


@cli.command()
def doctor() -> None:
    """Check the configuration, the database and the source, with a clear line for each."""
    from stocksync_dagster.cli.doctor import run_doctor

    if not run_doctor(_settings()):
        sys.exit(1)


@cli.command()
@click.argument("start", type=IsoDate(), metavar="START")
@click.argument("end", type=IsoDate(), metavar="END")
@click.option(
    "--asset",
    "assets",
    multiple=True,
    help="Only this market asset (repeatable); default: every asset of the market_sync job.",
)
def backfill(start: dt.date, end: dt.date, assets: tuple[str, ...]) -> None:
    """Load START..END (both YYYY-MM-DD) as one range run of the `market_sync` job.

    With a Dagster daemon running (`stocksync ui`) the run goes through the instance's run
    queue; without one it runs in this process. Either way it is stored on the instance.
    """
    from stocksync_dagster.cli.backfill import run_backfill

    run_backfill(_settings(), start, end, list(assets))


F = TypeVar("F", bound=Callable[..., Any])


def _failure_filters(f: F) -> F:
    """The filter options `stocksync failures` and `stocksync failures retry` share."""
    from stocksync_dagster.core.warehouse.schema import FAILURE_STATUSES

    options = [
        click.option(
            "--status",
            "statuses",
            multiple=True,
            type=click.Choice(FAILURE_STATUSES),
            help="Only rows in this status (repeatable).",
        ),
        click.option("--asset", "assets", multiple=True, help="Only this asset (repeatable)."),
        click.option(
            "--code", "codes", multiple=True, help="Only this stock, e.g. 600000.SH (repeatable)."
        ),
        click.option("--since", type=IsoDate(), help="Trading days from this one (YYYY-MM-DD)."),
        click.option("--until", type=IsoDate(), help="Trading days up to this one (YYYY-MM-DD)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _filter(
    statuses: tuple[str, ...],
    assets: tuple[str, ...],
    codes: tuple[str, ...],
    since: dt.date | None,
    until: dt.date | None,
) -> FailureFilter:
    if since and until and since > until:
        raise ConfigError("--since", f"{since} is after --until {until}")
    return FailureFilter(statuses or None, assets or None, codes or None, since, until)


@cli.group(invoke_without_command=True)
@_failure_filters
@click.option("--page", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--page-size", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option(
    "--format", "fmt", default="table", show_default=True, type=click.Choice(FAILURE_FORMATS)
)
@click.pass_context
def failures(
    ctx: click.Context,
    statuses: tuple[str, ...],
    assets: tuple[str, ...],
    codes: tuple[str, ...],
    since: dt.date | None,
    until: dt.date | None,
    page: int,
    page_size: int,
    fmt: str,
) -> None:
    """The failure desk (补拉): list sync_failure rows, newest first, paged and filtered.

    Read-only. `stocksync failures retry [filters] [--now]` re-queues rows.
    """
    if ctx.invoked_subcommand is not None:
        return
    from stocksync_dagster.cli.failures import show_failures

    where = _filter(statuses, assets, codes, since, until)
    show_failures(_settings(), where, page, page_size, fmt)


@failures.command("retry")
@_failure_filters
@click.option("--now", is_flag=True, help="Launch the repair runs at once, not on the next tick.")
def failures_retry(
    statuses: tuple[str, ...],
    assets: tuple[str, ...],
    codes: tuple[str, ...],
    since: dt.date | None,
    until: dt.date | None,
    now: bool,
) -> None:
    """Put matching unresolved rows (abandoned too) back to pending, retries reset.

    The repair sensor then re-fetches them; `--now` launches those repair runs immediately.
    """
    from stocksync_dagster.cli.failures import retry_failures

    retry_failures(_settings(), _filter(statuses, assets, codes, since, until), now)


@cli.command()
@click.option("--start", required=True, type=IsoDate(), help="First trading day (YYYY-MM-DD).")
@click.option("--end", required=True, type=IsoDate(), help="Last trading day (YYYY-MM-DD).")
@click.option("--codes", help="Only these stocks, comma-separated: 600000.SH,000001.SZ.")
@click.option(
    "--adjust",
    default="none",
    show_default=True,
    type=click.Choice(["none", "qfq", "hfq"]),
    help="Unadjusted, forward- (qfq) or backward-adjusted (hfq) prices.",
)
@click.option(
    "--as-of",
    "as_of",
    type=IsoDate(),
    help="qfq as seen on this day (divide by that day's factor); no rows after it.",
)
@click.option(
    "--format", "fmt", required=True, type=click.Choice(["parquet", "csv"]), help="File format."
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option(
    "--split",
    default="year",
    show_default=True,
    type=click.Choice(["year", "month"]),
    help="One file per year or per month.",
)
def export(
    start: dt.date,
    end: dt.date,
    codes: str | None,
    adjust: str,
    as_of: dt.date | None,
    fmt: str,
    out: str,
    split: str,
) -> None:
    """Export daily bars START..END to parquet or CSV, one file per year (or month).

    Streams the rows in chunks (bounded memory for the whole market); read-only: never
    creates a warehouse. Units as in the tables: CNY, shares, percent.
    """
    from pathlib import Path

    from stocksync_dagster.cli.export import run_export
    from stocksync_dagster.core.export import ExportRequest, parse_codes

    request = ExportRequest(
        start=start,
        end=end,
        out=Path(out),
        fmt=fmt,
        adjust=adjust,
        as_of=as_of,
        codes=parse_codes(codes),
        split=split,
    )
    run_export(_settings(), request)


def ui_command(dagster_args: tuple[str, ...]) -> list[str]:
    """`dagster dev` on the project's code location, with the user's options passed through."""
    from stocksync_dagster.cli.instance import workspace_file

    return ["dagster", "dev", "-w", str(workspace_file()), *dagster_args]


@cli.command(
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "help_option_names": ["--help"],  # -h is dagster dev's --host
    }
)
@click.argument("dagster_args", nargs=-1, type=click.UNPROCESSED)
def ui(dagster_args: tuple[str, ...]) -> None:
    """Start the Dagster UI and daemon (`dagster dev`) on this project and the CLI's instance.

    Options are passed to `dagster dev`, e.g. `stocksync ui -h 0.0.0.0 -p 3001`.
    """
    from stocksync_dagster.cli.instance import dagster_home

    os.environ["DAGSTER_HOME"] = str(dagster_home())
    _settings()  # fail fast on bad configuration
    command = ui_command(dagster_args)
    click.echo(f"DAGSTER_HOME={os.environ['DAGSTER_HOME']} {' '.join(command)}")
    os.execvp(command[0], command)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except WarehouseMissingError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except WarehouseUnavailableError as exc:
        click.echo(f"error: {exc}; `stocksync doctor` checks the whole setup", err=True)
        sys.exit(1)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except StocksyncError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
