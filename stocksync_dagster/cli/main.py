"""Entry point of the `stocksync` command."""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import warnings

import click

from stocksync_dagster.core.errors import ConfigError, StocksyncError
from stocksync_dagster.core.settings import Settings


def _settings() -> Settings:
    return Settings.from_env()


def _quiet_dagster() -> None:
    """Keep the terminal readable: Dagster's preview/beta warnings are for developers."""
    warnings.filterwarnings("ignore", module="dagster")
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.getLogger("dagster").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="stocksync-dagster")
def cli() -> None:
    """Keep a SQL warehouse of China A-share data in sync, orchestrated by Dagster."""
    _quiet_dagster()


@cli.command()
@click.option("--days", default=20, show_default=True, help="Recent trading days to load.")
@click.option("--stocks", default=300, show_default=True, help="Synthetic stocks in the market.")
def demo(days: int, stocks: int) -> None:
    """Materialize every asset from the offline demo source, run the checks, print a summary."""
    from stocksync_dagster.cli.demo import run_demo

    os.environ["STOCKSYNC_SOURCE"] = "demo"
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
@click.argument("start", type=click.DateTime(formats=["%Y-%m-%d"]))
@click.argument("end", type=click.DateTime(formats=["%Y-%m-%d"]))
@click.option(
    "--asset",
    "assets",
    multiple=True,
    default=["daily_bars", "adj_factor"],
    show_default=True,
    help="Partitioned asset(s) to backfill.",
)
def backfill(start: dt.datetime, end: dt.datetime, assets: tuple[str, ...]) -> None:
    """Load START..END (YYYY-MM-DD) as one range run: one fetch for the whole range."""
    from stocksync_dagster.cli.backfill import run_backfill

    run_backfill(_settings(), start.date(), end.date(), list(assets))


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("dagster_args", nargs=-1, type=click.UNPROCESSED)
def ui(dagster_args: tuple[str, ...]) -> None:
    """Start `dagster dev` on this project with the CLI's Dagster instance."""
    from stocksync_dagster.cli.instance import dagster_home

    os.environ["DAGSTER_HOME"] = str(dagster_home())
    _settings()  # fail fast on bad configuration
    command = ["dagster", "dev", "-m", "stocksync_dagster.definitions", *dagster_args]
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
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except StocksyncError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
