"""Shared fixtures: warehouses on SQLite and on the real PostgreSQL server, demo resources.

Postgres tests use the server at STOCKSYNC_TEST_PG (default postgresql+psycopg://postgres@127.0.0.1:5432/test)
and create a throwaway database per test session. Outside CI they skip with the reason when the
server is unreachable; with CI=true they fail instead.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

# The definitions are module-level objects built from the environment when they are first
# imported: fix the settings they read before any test imports them. Steps retry quickly.
os.environ.setdefault("STOCKSYNC_SOURCE", "demo")
os.environ.setdefault("STOCKSYNC_START_DATE", "2025-01-02")
os.environ.setdefault("STOCKSYNC_SOURCE_RETRIES", "2")
os.environ.setdefault("STOCKSYNC_SOURCE_RETRY_DELAY_SECONDS", "0.1")
os.environ.pop("STOCKSYNC_ALERT_WEBHOOKS", None)

from stocksync_dagster.core.settings import current_settings
from stocksync_dagster.core.warehouse import Warehouse

# module-scoped loopback baostock and Tushare servers (tests/loopback_market.py)
pytest_plugins = ["tests.loopback_market"]

PG_ADMIN_URL = os.environ.get(
    "STOCKSYNC_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# A fixed window of the demo market with ex-dividend days, limit moves, suspensions, IPOs and
# a delisting inside it (asserted in tests/test_demo_market.py).
DEMO_START = dt.date(2025, 8, 4)
DEMO_END = dt.date(2025, 8, 29)


@pytest.fixture(autouse=True)
def _settings_of_this_test() -> Iterator[None]:
    """Settings are cached per process: a test that changed the environment leaves none behind."""
    yield
    current_settings.cache_clear()


def _postgres_admin_engine() -> sa.Engine | None:
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as exc:
        if IN_CI:
            pytest.fail(f"CI=true but PostgreSQL at {PG_ADMIN_URL} is unreachable: {exc}")
        engine.dispose()
        return None
    return engine


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """URL of a fresh database on the real PostgreSQL server, dropped after the session."""
    engine = _postgres_admin_engine()
    if engine is None:
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL} (set CI=true to require it)")
    name = f"stocksync_test_{uuid.uuid4().hex[:10]}"
    with engine.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    url = sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    from stocksync_dagster.core.warehouse import engine as warehouse_engine

    warehouse_engine._ready.discard(url)
    with engine.connect() as connection:
        connection.exec_driver_sql(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        )
        connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
    engine.dispose()


def _truncate(warehouse: Warehouse) -> None:
    from stocksync_dagster.core.warehouse.schema import metadata

    with warehouse.begin() as connection:
        for table in reversed(metadata.sorted_tables):
            connection.execute(table.delete())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def warehouse_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """An empty warehouse, once on SQLite and once on the real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'warehouse.db'}"
        return
    url = request.getfixturevalue("postgres_server_url")
    _truncate(Warehouse(url))
    yield url


@pytest.fixture
def warehouse(warehouse_url: str) -> Iterator[Warehouse]:
    wh = Warehouse(warehouse_url)
    wh.ensure_schema()
    yield wh
    wh.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'warehouse.db'}"
