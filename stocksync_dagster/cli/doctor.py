"""`stocksync doctor`: is the configuration valid, the database reachable, the source answering?

The warehouse and the source are the resources a run uses, opened the way a run opens them
(`dg.build_resources`: `EnvVar`s resolved, setup and teardown hooks run). Nothing is written.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from pathlib import Path

import click
import dagster as dg
import pydantic
import sqlalchemy as sa

from stocksync_dagster.core.errors import StocksyncError
from stocksync_dagster.core.settings import Settings, redact_url
from stocksync_dagster.resources import FallbackSourceResource

SOURCE_TIMEOUT_SECONDS = 30


def first_line(exc: BaseException) -> str:
    """One readable line for an error, from the cause Dagster wrapped if it wrapped one."""
    while isinstance(exc, dg.DagsterError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, pydantic.ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, error['loc']))}: {error['msg'].removeprefix('Value error, ')}"
            for error in exc.errors()
        )
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check(label: str, probe: Callable[[], str]) -> bool:
    try:
        detail = probe()
    except Exception as exc:  # every failure becomes one readable line
        click.echo(f"  FAIL  {label}: {first_line(exc)}")
        return False
    click.echo(f"  ok    {label}: {detail}")
    return True


def _database(resource: dg.ConfigurableResource) -> str:
    with dg.build_resources({"warehouse": resource}) as resources:
        warehouse = resources.warehouse.get()
        url = sa.make_url(warehouse.url)
        path = url.database if url.get_backend_name() == "sqlite" else None
        if path and path != ":memory:" and not Path(path).exists():
            return f"{warehouse.safe_url} (not created yet: the first run creates it)"
        try:
            version = warehouse.schema_version()
        except sa.exc.SQLAlchemyError as exc:
            detail = first_line(getattr(exc, "orig", None) or exc).replace(
                warehouse.url, warehouse.safe_url
            )
            raise StocksyncError(f"cannot reach {warehouse.safe_url}: {detail}") from None
        return f"{warehouse.safe_url} (schema version {version or 'none yet'})"


def _source(settings: Settings, resource: dg.ConfigurableResource) -> str:
    if settings.uses_tushare and not settings.tushare_tokens:
        raise StocksyncError("TUSHARE_TOKEN: not set (required for STOCKSYNC_SOURCE=tushare)")
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(_probe_source, resource)
    try:
        return future.result(timeout=SOURCE_TIMEOUT_SECONDS)
    except concurrent.futures.TimeoutError:
        raise StocksyncError(
            f"{','.join(settings.sources)}: no answer in {SOURCE_TIMEOUT_SECONDS}s "
            "(is the server reachable?)"
        ) from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _prober(settings: Settings, resource: dg.ConfigurableResource) -> Callable[[], str]:
    return lambda: _source(settings, resource)


def _probe_source(resource: dg.ConfigurableResource) -> str:
    with dg.build_resources({"source": resource}) as resources:
        return resources.source.check_connection()


def run_doctor(settings: Settings) -> bool:
    """Print one line per check; True when everything is fine."""
    from stocksync_dagster.defs.resources import project_resources

    click.echo("configuration")
    sources = settings.source + (
        f" (fallback: {settings.fallback_source})" if settings.fallback_source else ""
    )
    click.echo(f"  ok    STOCKSYNC_SOURCE: {sources}")
    click.echo(f"  ok    STOCKSYNC_START_DATE: {settings.start_date}")
    try:
        resources = project_resources(settings)
    except (pydantic.ValidationError, StocksyncError) as exc:
        click.echo(f"  FAIL  {settings.source} settings: {first_line(exc)}")
        return False
    if "baostock" in settings.sources and settings.baostock_server:
        click.echo(f"  ok    BAOSTOCK_SERVER: {settings.baostock_server}")
    if settings.uses_tushare:
        click.echo(f"  ok    TUSHARE_TOKEN: {len(settings.tushare_tokens)} token(s) (not shown)")
        if settings.tushare_api_url:
            click.echo(f"  ok    TUSHARE_API_URL: {redact_url(settings.tushare_api_url)}")
    click.echo(f"  ok    STOCKSYNC_ALERT_WEBHOOKS: {len(settings.alert_webhooks)} webhook(s)")
    for email in settings.alert_emails:
        click.echo(f"  ok    STOCKSYNC_ALERT_EMAIL: {redact_url(email)}")
    if settings.alert_digest_at is not None:
        at = settings.alert_digest_at.strftime("%H:%M")
        click.echo(f"  ok    STOCKSYNC_ALERT_DIGEST_AT: one digest a day at {at}")
    click.echo("database")
    ok = _check("warehouse", lambda: _database(resources["warehouse"]))
    click.echo("source")
    source = resources["source"]
    if isinstance(source, FallbackSourceResource):  # each source on its own line
        for role, name, resource in (
            ("primary", settings.source, source.primary),
            ("fallback", settings.fallback_source, source.fallback),
        ):
            ok = _check(f"{name} ({role})", _prober(settings, resource)) and ok
        return ok
    ok = _check(settings.source, lambda: _source(settings, source)) and ok
    return ok
