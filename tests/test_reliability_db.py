"""Database outage mid-run: a loopback proxy in front of the real PostgreSQL is cut and restored.

The shared server itself is never touched. The step fails with a clear error naming the setting
(and no password), Dagster's RetryPolicy retries it, it succeeds once the database is back; the
interrupted transaction left no rows and no connection is leaked.
"""

import datetime as dt
from collections.abc import Iterator

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from stocksync_dagster.core import sync
from stocksync_dagster.core.sources.demo import shared_market
from stocksync_dagster.core.warehouse import Warehouse
from stocksync_dagster.core.warehouse import engine as warehouse_engine
from stocksync_dagster.defs.market.assets import market_data
from stocksync_dagster.resources import DemoSourceResource, WarehouseResource
from stocksync_dagster.resources import warehouse as warehouse_resource
from tests.conftest import _truncate
from tests.fakes.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(120)]

DAY = dt.date(2025, 8, 5)
PASSWORD = "pw-outage-7f3a91"
STOCKS = 40
TAGS = {
    "dagster/asset_partition_range_start": DAY.isoformat(),
    "dagster/asset_partition_range_end": DAY.isoformat(),
}


@pytest.fixture
def database(postgres_server_url: str) -> Iterator[str]:
    """The session's test database with an empty warehouse."""
    _truncate(Warehouse(postgres_server_url))
    yield postgres_server_url


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", 5432) as tcp_proxy:
        yield tcp_proxy


def through(proxy: TcpProxy, url: str) -> str:
    return (
        sa.make_url(url)
        .set(port=proxy.port, password=PASSWORD)
        .render_as_string(hide_password=False)
    )


def backends(url: str, proxy: TcpProxy) -> pd.DataFrame:
    """The server's sessions that came through the proxy (other tests' pools do not count)."""
    admin = sa.create_engine(url)
    with admin.connect() as connection:
        frame = pd.read_sql(
            sa.text(
                "SELECT pid, state, client_port FROM pg_stat_activity "
                "WHERE datname = current_database() AND client_port = ANY(:ports)"
            ),
            connection,
            params={"ports": list(proxy.upstream_ports)},
        )
    admin.dispose()
    return frame


def count_rows(url: str) -> int:
    admin = sa.create_engine(url)
    with admin.connect() as connection:
        count = connection.exec_driver_sql("SELECT count(*) FROM daily_bar").scalar_one()
    admin.dispose()
    return int(count)


# The assets' own RetryPolicy (STOCKSYNC_SOURCE_RETRIES; tests/conftest.py: 2 retries, 0.1 s).
RETRIES = market_data.op.retry_policy.max_retries  # type: ignore[union-attr]


def run(proxy_url: str) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [market_data],
        selection=["daily_bars"],
        resources={
            "source": DemoSourceResource(stocks=STOCKS),
            "warehouse": WarehouseResource(url=proxy_url),
        },
        tags=TAGS,
        raise_on_error=False,
    )


def step_errors(result: dg.ExecuteInProcessResult) -> list[str]:
    """The user-code error of every failed attempt (retried or final), in order."""
    errors = []
    for event in result.all_events:
        if event.event_type_value in ("STEP_UP_FOR_RETRY", "STEP_FAILURE"):
            error = event.event_specific_data.error  # type: ignore[union-attr]
            while error.cause is not None and (error.cls_name or "").startswith(
                ("Dagster", "RetryRequested")
            ):
                error = error.cause  # Dagster wraps the asset's exception
            errors.append(error.message)
    return errors


def forget(proxy_url: str) -> None:
    """Dispose the process-wide engine of the proxied URL (as a worker exiting would)."""
    warehouse = warehouse_resource._warehouses.pop(proxy_url, None)
    if warehouse is not None:
        warehouse.dispose()
    warehouse_engine._ready.discard(proxy_url)


def test_outage_mid_write_fails_clearly_retries_and_heals_without_partial_rows_or_leaks(
    database: str, proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy_url = through(proxy, database)
    attempts: list[int] = []
    rows_during_outage: list[int] = []
    real_upsert, real_open_days = sync.upsert_frame, sync.open_days_between

    def upsert_then_cut(connection, table, frame, **options):  # type: ignore[no-untyped-def]
        stats = real_upsert(connection, table, frame, **options)
        if len(attempts) == 1:
            proxy.cut()  # rows are in the open transaction; the commit can never arrive
        return stats

    def attempt(source, start, end):  # type: ignore[no-untyped-def]
        attempts.append(len(attempts) + 1)
        if len(attempts) >= 2:
            rows_during_outage.append(count_rows(database))
        if len(attempts) == 3:
            proxy.restore()  # the database is back for the third attempt
        return real_open_days(source, start, end)

    monkeypatch.setattr(sync, "upsert_frame", upsert_then_cut)
    monkeypatch.setattr(sync, "open_days_between", attempt)
    assert RETRIES >= 2, "this test needs a first try and two retries"
    try:
        result = run(proxy_url)
        assert result.success
        assert attempts == [1, 2, 3]
        errors = step_errors(result)
        assert len(errors) == 2  # mid-write, then still down at the start of the retry
        for error in errors:
            assert "WarehouseUnavailableError: STOCKSYNC_DATABASE_URL: cannot use" in error
            assert f"127.0.0.1:{proxy.port}" in error and PASSWORD not in error
        assert rows_during_outage == [0, 0]  # the interrupted write left nothing behind
        expected = len(shared_market(STOCKS, 42).bars(DAY, DAY))
        assert count_rows(database) == expected
        assert proxy.refused >= 1

        sessions = backends(database, proxy)
        assert "idle in transaction" not in set(sessions["state"])
        assert len(sessions) <= 2  # the engine's pool; the reset connections are gone
    finally:
        forget(proxy_url)
    assert _eventually_no_sessions(database, proxy)


def test_outage_that_outlasts_the_retries_fails_the_run_with_one_clear_error(
    database: str, proxy: TcpProxy
) -> None:
    proxy_url = through(proxy, database)
    try:
        proxy.cut()
        result = run(proxy_url)
        assert not result.success
        errors = step_errors(result)
        assert len(errors) == RETRIES + 1
        assert all("STOCKSYNC_DATABASE_URL: cannot use the warehouse" in e for e in errors)
        assert all(PASSWORD not in e and "\n" not in e.strip() for e in errors)
        proxy.restore()
        assert count_rows(database) == 0
    finally:
        forget(proxy_url)
    assert _eventually_no_sessions(database, proxy)


def _eventually_no_sessions(url: str, proxy: TcpProxy, seconds: float = 5.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if backends(url, proxy).empty:
            return True
        time.sleep(0.1)
    return False
