"""Connections to the warehouse (SQLite by default, PostgreSQL in production) and schema set-up."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from stocksync_dagster.core.errors import StocksyncError
from stocksync_dagster.core.settings import redact_database_url
from stocksync_dagster.core.warehouse import schema

log = logging.getLogger(__name__)
_MIGRATIONS = Path(__file__).parent / "migrations"
_ready: set[str] = set()
_ready_lock = threading.Lock()


class WarehouseUnavailableError(StocksyncError):
    """The warehouse database cannot be reached or set up."""


class WarehouseMissingError(WarehouseUnavailableError):
    """A read-only command found no warehouse (and created none)."""


class Warehouse:
    """One database: an engine, schema creation/migration on first use, and transactions."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.safe_url = redact_database_url(url)

    @cached_property
    def engine(self) -> sa.Engine:
        url = sa.make_url(self.url)
        if url.get_backend_name() == "sqlite":
            if url.database and url.database != ":memory:":
                Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(url, connect_args={"timeout": 120})
            _configure_sqlite(engine)
            return engine
        return sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        """One transaction: everything inside commits together or not at all."""
        self.ensure_schema()
        try:
            with self.engine.begin() as connection:
                yield connection
        except sa.exc.OperationalError as exc:
            raise self._unavailable(exc) from exc

    @contextmanager
    def connect(self) -> Iterator[sa.Connection]:
        """A connection for reads."""
        self.ensure_schema()
        try:
            with self.engine.connect() as connection:
                yield connection
        except sa.exc.OperationalError as exc:
            raise self._unavailable(exc) from exc

    def missing_reason(self) -> str | None:
        """Why there is no warehouse to read (a SQLite file that does not exist), else None."""
        url = sa.make_url(self.url)
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            return None
        path = Path(url.database)
        if path.is_file():
            return None
        where = "its directory does not exist" if not path.parent.is_dir() else "no such file"
        return f"STOCKSYNC_DATABASE_URL: no warehouse at {self.safe_url} ({where})"

    @contextmanager
    def read_only(self) -> Iterator[sa.Connection]:
        """A connection for read-only commands: creates no file, directory, table or schema."""
        reason = self.missing_reason()
        if reason:
            raise WarehouseMissingError(
                f"{reason}; nothing was created: a sync (e.g. `stocksync demo`) creates it"
            )
        try:
            with self.engine.connect() as connection:
                if not sa.inspect(connection).has_table(schema.sync_failure.name):
                    raise WarehouseMissingError(
                        f"STOCKSYNC_DATABASE_URL: {self.safe_url} has no stocksync tables yet; "
                        "a sync creates them"
                    )
                yield connection
        except sa.exc.OperationalError as exc:
            raise self._unavailable(exc) from exc

    def ensure_schema(self) -> None:
        """Create the schema on first use, or migrate it to the current version."""
        if self.url in _ready:
            return
        with _ready_lock:
            if self.url in _ready:
                return
            try:
                with self.engine.begin() as connection:
                    if self.dialect == "postgresql":
                        # Two processes starting at once must not both create the schema.
                        connection.exec_driver_sql(
                            "SELECT pg_advisory_xact_lock(hashtext('stocksync_schema'))"
                        )
                    self._create_or_upgrade(connection)
            except sa.exc.OperationalError as exc:
                raise self._unavailable(exc) from exc
            _ready.add(self.url)

    def _create_or_upgrade(self, connection: sa.Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        config.attributes["connection"] = connection
        head = ScriptDirectory.from_config(config).get_current_head()
        current = MigrationContext.configure(connection).get_current_revision()
        if current == head:
            return
        if current is None:
            log.info("creating warehouse schema in %s", self.safe_url)
            schema.metadata.create_all(connection)
            schema.create_views(connection)
            command.stamp(config, "head")
        else:
            log.info("migrating warehouse %s from %s to %s", self.safe_url, current, head)
            command.upgrade(config, "head")
            schema.create_views(connection)

    def schema_version(self) -> str | None:
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def _unavailable(self, exc: Exception) -> WarehouseUnavailableError:
        first_line = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc) else ""
        first_line = first_line.replace(self.url, self.safe_url)
        return WarehouseUnavailableError(
            f"STOCKSYNC_DATABASE_URL: cannot use the warehouse at {self.safe_url}: {first_line} "
            "(check that the database is running and the URL is right)"
        )

    def dispose(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()


def _configure_sqlite(engine: sa.Engine) -> None:
    """WAL for concurrent readers; BEGIN IMMEDIATE so two writers queue instead of deadlocking;
    a page cache large enough for bulk writes."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # let SQLAlchemy's BEGIN below drive transactions
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=120000")
        # 64 MiB of page cache (default 2 MiB): a year of bars is written without re-reading
        # index pages evicted half-way through the write.
        cursor.execute("PRAGMA cache_size=-65536")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
