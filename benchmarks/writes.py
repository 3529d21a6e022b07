"""3. Warehouse writes: our `upsert_frame` against the limit of each backend, side by side.

Rows are a year of validated demo bars in the order the sync produces them (date-major),
written into the project's `daily_bar` table (PK code, trade_date, index on trade_date).
Limits, measured in the same process and interleaved with our cases (median of `ROUNDS`):
- PostgreSQL: psycopg 3 binary COPY (`write_row`, conversion included) of the same frame in
  primary-key order into the same table with the same indexes;
- SQLite: a plain `executemany` of `INSERT ... ON CONFLICT DO UPDATE` of the same rows,
  prebuilt as PK-ordered tuples (conversion not timed), one WAL transaction, same pragmas.
Every case starts from the table state it names: "empty" on a truncated (new) table,
"identical" and "changed" on a table freshly refilled with the original rows.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from benchmarks.common import Outcome, Row, Target
from benchmarks.sizes import Size
from stocksync_dagster.core.sources.demo import DemoSource
from stocksync_dagster.core.sources.demo_market import DemoMarket
from stocksync_dagster.core.validation import validate_bars
from stocksync_dagster.core.warehouse import Warehouse, schema
from stocksync_dagster.core.warehouse.upsert import upsert_frame

ROUNDS = 3
TARGET_NEW_OF_COPY = 0.9
TARGET_RERUN_SPEEDUP = 2.0
TARGET_SQLITE = 0.9
TARGET_OVER_TO_SQL = 10.0
COLUMNS = [c.name for c in schema.daily_bar.columns]
KEYS = ["code", "trade_date"]
CHANGED = ("open", "high", "low", "close", "amount")


def bars_frame(stocks: int, size: Size) -> pd.DataFrame:
    """A year of validated bars for `stocks` demo stocks, as the sync writes them."""
    market = DemoMarket(stocks, origin=size.start)
    good, _ = validate_bars(market.bars(size.start, size.end), size.start, size.end)
    return good.assign(source=DemoSource.name)[COLUMNS].reset_index(drop=True)


def _changed(frame: pd.DataFrame) -> pd.DataFrame:
    changed = frame.copy()
    for column in CHANGED:
        changed[column] = changed[column] * 1.01
    return changed


def _timed(action: Callable[[], object]) -> float:
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


class _Samples:
    """Seconds per case over the rounds, plus any numbers measured with them."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = {}
        self.extra: dict[str, list[float]] = {}

    def add(self, case: str, seconds: float, **extra: float) -> None:
        self.seconds.setdefault(case, []).append(seconds)
        for key, value in extra.items():
            self.extra.setdefault(f"{case}.{key}", []).append(value)

    def median(self, case: str) -> float:
        return statistics.median(self.seconds[case])

    def extra_median(self, case: str, key: str) -> float:
        return statistics.median(self.extra[f"{case}.{key}"])


# ----- PostgreSQL ------------------------------------------------------------------------------
def _prepare(warehouse: Warehouse, refill: pd.DataFrame | None = None) -> None:
    """An empty table, or one holding `refill` as autovacuum would leave it; then a checkpoint."""
    with warehouse.begin() as connection:
        connection.exec_driver_sql("TRUNCATE daily_bar")
    if refill is not None:
        _ours(warehouse, refill)
    with warehouse.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        if refill is not None:
            connection.exec_driver_sql("VACUUM (ANALYZE) daily_bar")
        connection.exec_driver_sql("CHECKPOINT")


def _wal_lsn(warehouse: Warehouse) -> str:
    with warehouse.engine.connect() as connection:
        return str(connection.exec_driver_sql("SELECT pg_current_wal_lsn()").scalar_one())


def _wal_bytes(warehouse: Warehouse, since: str) -> float:
    with warehouse.engine.connect() as connection:
        return float(
            connection.exec_driver_sql(
                f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{since}')"
            ).scalar_one()
        )


def _write_rows(cursor: object, target: str, ordered: pd.DataFrame) -> None:
    """psycopg 3 binary COPY with `write_row`, straight from the frame's columns."""
    types = ["text", "date", *["float8"] * 5, "int8", "float8", "float8", "text"]
    assert len(types) == len(COLUMNS), "one COPY type per daily_bar column"
    sql = f"COPY {target} ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
    with cursor.copy(sql) as copy:  # type: ignore[attr-defined]
        copy.set_types(types)
        for row in zip(*[ordered[c].tolist() for c in COLUMNS], strict=True):
            copy.write_row(row)


def _raw_cursor(connection: sa.Connection) -> Any:
    """The psycopg cursor of a SQLAlchemy connection, inside that connection's transaction."""
    return connection.connection.driver_connection.cursor()


def _binary_copy(warehouse: Warehouse, ordered: pd.DataFrame) -> None:
    """The limit for new rows: a binary COPY into the table, in one transaction."""
    with warehouse.engine.begin() as connection, _raw_cursor(connection) as cursor:
        _write_rows(cursor, "daily_bar", ordered)


def _textbook_upsert(warehouse: Warehouse, ordered: pd.DataFrame) -> None:
    """The reference for changed rows: binary COPY into TEMP, one unfiltered ON CONFLICT."""
    changing = [c for c in COLUMNS if c not in KEYS]
    with warehouse.engine.begin() as connection, _raw_cursor(connection) as cursor:
        cursor.execute("CREATE TEMP TABLE stage_ref (LIKE daily_bar) ON COMMIT DROP")
        _write_rows(cursor, "stage_ref", ordered)
        cursor.execute(
            f"INSERT INTO daily_bar ({', '.join(COLUMNS)}) SELECT {', '.join(COLUMNS)} "
            f"FROM stage_ref ON CONFLICT ({', '.join(KEYS)}) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in changing)
        )


def _ours(warehouse: Warehouse, frame: pd.DataFrame) -> dict[str, int]:
    with warehouse.begin() as connection:
        stats = upsert_frame(connection, schema.daily_bar, frame)
    return {"inserted": stats.inserted, "updated": stats.updated, "unchanged": stats.unchanged}


def _pg_case(
    warehouse: Warehouse, samples: _Samples, case: str, action: Callable[[], object]
) -> None:
    lsn = _wal_lsn(warehouse)
    seconds = _timed(action)
    samples.add(case, seconds, wal=_wal_bytes(warehouse, lsn))


def postgres_rows(url: str, size: Size) -> tuple[list[Row], list[Target]]:
    frame = bars_frame(size.write_rows_stocks, size)
    ordered = frame.sort_values(KEYS, ignore_index=True)
    changed = _changed(frame)
    ordered_changed = _changed(ordered)
    n = len(frame)
    warehouse = Warehouse(url)
    warehouse.ensure_schema()
    samples = _Samples()
    counts: dict[str, dict[str, int]] = {}
    for _ in range(ROUNDS):
        _prepare(warehouse)
        _pg_case(warehouse, samples, "copy", lambda: _binary_copy(warehouse, ordered))
        _prepare(warehouse)
        _pg_case(warehouse, samples, "new", lambda: counts.update(new=_ours(warehouse, frame)))
        _prepare(warehouse, refill=frame)
        _pg_case(warehouse, samples, "same", lambda: counts.update(same=_ours(warehouse, frame)))
        _prepare(warehouse, refill=frame)
        _pg_case(
            warehouse, samples, "changed", lambda: counts.update(changed=_ours(warehouse, changed))
        )
        _prepare(warehouse, refill=frame)
        _pg_case(
            warehouse, samples, "textbook", lambda: _textbook_upsert(warehouse, ordered_changed)
        )
    sample = frame.head(size.to_sql_sample)
    _prepare(warehouse)
    with warehouse.engine.begin() as connection:
        to_sql_seconds = _timed(
            lambda: sample.to_sql("daily_bar", connection, if_exists="append", index=False)
        ) * (n / len(sample))
    _prepare(warehouse)
    warehouse.dispose()

    cases = ("copy", "new", "same", "changed", "textbook")
    copy, new, same, chg, textbook = (samples.median(c) for c in cases)
    mb = {c: samples.extra_median(c, "wal") / 1e6 for c in cases}
    rows = [
        Row(
            "writes",
            "PG limit: binary COPY (write_row), PK order, empty table",
            copy,
            rows=n,
            note=f"WAL {mb['copy']:,.0f} MB",
        ),
        Row(
            "writes",
            "PG ours, empty table (date-major frame)",
            new,
            rows=n,
            note=f"{copy / new:.2f}x the limit; WAL {mb['new']:,.0f} MB; {counts['new']}",
        ),
        Row(
            "writes",
            "PG ours, identical rows (refilled table)",
            same,
            rows=n,
            note=f"{new / same:.1f}x faster than the fresh load; WAL {mb['same']:,.1f} MB; "
            f"{counts['same']}",
        ),
        Row(
            "writes",
            "PG reference: COPY into TEMP + unfiltered ON CONFLICT, every row changed",
            textbook,
            rows=n,
            note=f"the physical UPDATE cost; WAL {mb['textbook']:,.0f} MB",
        ),
        Row(
            "writes",
            "PG ours, every row changed (refilled table)",
            chg,
            rows=n,
            note=f"{textbook / chg:.2f}x the reference; WAL {mb['changed']:,.0f} MB; "
            f"{counts['changed']}",
        ),
        Row(
            "writes",
            "PG pandas.to_sql default",
            to_sql_seconds,
            rows=n,
            extrapolated=True,
            note=f"timed on {len(sample):,} rows, scaled to {n:,}",
        ),
    ]
    targets = [
        Target(
            "writes",
            f"PG new rows >= {TARGET_NEW_OF_COPY}x binary COPY, same run",
            f"{copy / new:.2f}x ({n / new:,.0f} vs {n / copy:,.0f} rows/s)",
            copy / new >= TARGET_NEW_OF_COPY,
        ),
        Target(
            "writes",
            f"PG identical rerun >= {TARGET_RERUN_SPEEDUP:.0f}x faster than a fresh load, ~0 WAL",
            f"{new / same:.1f}x, WAL {mb['same']:,.1f} MB (fresh load {mb['new']:,.0f} MB)",
            new / same >= TARGET_RERUN_SPEEDUP,
        ),
        Target(
            "writes",
            f"PG new rows >= {TARGET_OVER_TO_SQL:.0f}x pandas.to_sql",
            f"{to_sql_seconds / new:.1f}x",
            to_sql_seconds / new >= TARGET_OVER_TO_SQL,
        ),
    ]
    return rows, targets


# ----- SQLite ----------------------------------------------------------------------------------
def _plain_upsert_sql() -> str:
    changing = [c for c in COLUMNS if c not in KEYS]
    return (
        f"INSERT INTO daily_bar ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)}) "
        f"ON CONFLICT ({', '.join(KEYS)}) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in changing)
    )


def _sqlite_db(directory: Path, name: str) -> Warehouse:
    warehouse = Warehouse(f"sqlite:///{directory / name}.db")
    warehouse.ensure_schema()
    return warehouse


def _plain_executemany(warehouse: Warehouse, tuples: list[tuple]) -> float:
    """The limit, on a connection with the same pragmas as ours (the engine's own)."""
    with warehouse.engine.connect() as connection:
        raw = connection.connection.driver_connection
        sql = _plain_upsert_sql()

        def write() -> None:
            raw.execute("BEGIN IMMEDIATE")
            raw.executemany(sql, tuples)
            raw.execute("COMMIT")

        return _timed(write)


def _plain_tuples(ordered: pd.DataFrame) -> list[tuple]:
    """The plainest conversion of a frame into sqlite3 parameters: column lists zipped."""
    columns = [
        [d.isoformat() for d in ordered[c]] if c == "trade_date" else ordered[c].tolist()
        for c in COLUMNS
    ]
    return list(zip(*columns, strict=True))


def sqlite_rows(size: Size) -> tuple[list[Row], list[Target]]:
    frame = bars_frame(size.sqlite_stocks, size)
    n = len(frame)
    ordered = frame.sort_values(KEYS, ignore_index=True)
    tuples = _plain_tuples(ordered)
    samples = _Samples()
    with tempfile.TemporaryDirectory(prefix="stocksync_bench_") as tmp:
        directory = Path(tmp)
        for r in range(ROUNDS):
            limit = _sqlite_db(directory, f"limit{r}")
            samples.add("convert", _timed(lambda: _plain_tuples(ordered)))
            samples.add("limit_new", _plain_executemany(limit, tuples))
            samples.add("limit_same", _plain_executemany(limit, tuples))
            limit.dispose()
            ours = _sqlite_db(directory, f"ours{r}")
            samples.add("ours_new", _timed(lambda w=ours: _ours(w, frame)))
            samples.add("ours_same", _timed(lambda w=ours: _ours(w, frame)))
            ours.dispose()
        check = _sqlite_db(directory, "check")
        assert _ours(check, frame)["inserted"] == n
        assert _ours(check, frame)["unchanged"] == n
        check.dispose()
    ln, ls, on, os_, conv = (
        samples.median(c) for c in ("limit_new", "limit_same", "ours_new", "ours_same", "convert")
    )
    rows = [
        Row(
            "writes",
            "SQLite limit: plain executemany upsert, PK-ordered tuples, empty",
            ln,
            rows=n,
            note="tuples prebuilt (not timed)",
        ),
        Row(
            "writes",
            "SQLite ours, empty table (date-major frame)",
            on,
            rows=n,
            note=f"{ln / on:.2f}x the limit (sort + conversion included); "
            f"{(ln + conv) / on:.2f}x the limit plus its own tuple building ({conv:.2f} s)",
        ),
        Row(
            "writes",
            "SQLite limit: plain executemany upsert, identical rows",
            ls,
            rows=n,
            note="rewrites every row",
        ),
        Row(
            "writes",
            "SQLite ours, identical rows",
            os_,
            rows=n,
            note=f"{ls / os_:.2f}x the limit (0 written); {(ls + conv) / os_:.2f}x with its "
            "tuple building",
        ),
    ]
    targets = [
        Target(
            "writes",
            f"SQLite new rows >= {TARGET_SQLITE}x plain executemany upsert",
            f"{ln / on:.2f}x",
            ln / on >= TARGET_SQLITE,
        ),
        Target(
            "writes",
            f"SQLite identical rows >= {TARGET_SQLITE}x plain executemany upsert",
            f"{ls / os_:.2f}x",
            ls / os_ >= TARGET_SQLITE,
        ),
    ]
    return rows, targets


def run(size: Size, url: str | None) -> Outcome:
    out = Outcome(
        params={
            "pg_stocks": size.write_rows_stocks,
            "sqlite_stocks": size.sqlite_stocks,
            "rounds": ROUNDS,
        }
    )
    if url is not None:
        rows, targets = postgres_rows(url, size)
        out.rows += rows
        out.targets += targets
    rows, targets = sqlite_rows(size)
    out.rows += rows
    out.targets += targets
    return out
