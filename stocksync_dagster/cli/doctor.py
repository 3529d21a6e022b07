"""`stocksync doctor`: is the configuration valid, the database reachable, the source answering?"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable

import click

from stocksync_dagster.core.errors import StocksyncError
from stocksync_dagster.core.settings import Settings, redact_url
from stocksync_dagster.core.warehouse import Warehouse

SOURCE_TIMEOUT_SECONDS = 30


def _check(label: str, probe: Callable[[], str]) -> bool:
    try:
        detail = probe()
    except Exception as exc:  # every failure becomes one readable line
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        click.echo(f"  FAIL  {label}: {message}")
        return False
    click.echo(f"  ok    {label}: {detail}")
    return True


def _database(settings: Settings) -> str:
    warehouse = Warehouse(settings.database_url)
    warehouse.ensure_schema()
    return f"{warehouse.safe_url} (schema version {warehouse.schema_version()})"


def _source(settings: Settings) -> str:
    from stocksync_dagster.resources import build_source_resource

    resource = build_source_resource(settings)
    if settings.source == "tushare" and not settings.tushare_tokens:
        raise StocksyncError("TUSHARE_TOKEN: not set (required for STOCKSYNC_SOURCE=tushare)")
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(lambda: _probe_source(resource))
    try:
        return future.result(timeout=SOURCE_TIMEOUT_SECONDS)
    except concurrent.futures.TimeoutError:
        raise StocksyncError(
            f"{settings.source}: no answer in {SOURCE_TIMEOUT_SECONDS}s (is the server reachable?)"
        ) from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _probe_source(resource: object) -> str:
    with resource.open() as source:  # type: ignore[attr-defined]
        return source.check_connection()


def run_doctor(settings: Settings) -> bool:
    """Print one line per check; True when everything is fine."""
    click.echo("configuration")
    click.echo(f"  ok    STOCKSYNC_SOURCE: {settings.source}")
    click.echo(f"  ok    STOCKSYNC_START_DATE: {settings.start_date}")
    if settings.baostock_server:
        click.echo(
            f"  ok    BAOSTOCK_SERVER: {settings.baostock_server[0]}:{settings.baostock_server[1]}"
        )
    if settings.source == "tushare":
        click.echo(f"  ok    TUSHARE_TOKEN: {len(settings.tushare_tokens)} token(s) (not shown)")
    if settings.tushare_api_url:
        click.echo(f"  ok    TUSHARE_API_URL: {redact_url(settings.tushare_api_url)}")
    click.echo(f"  ok    STOCKSYNC_ALERT_WEBHOOKS: {len(settings.alert_webhooks)} webhook(s)")
    click.echo("database")
    ok = _check("warehouse", lambda: _database(settings))
    click.echo("source")
    ok = _check(settings.source, lambda: _source(settings)) and ok
    return ok
