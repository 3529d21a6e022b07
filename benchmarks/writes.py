"""3. Warehouse writes: raw COPY (the limit) vs our upsert vs pandas.to_sql; SQLite paths.

Rows are a year of validated demo bars written into the project's `daily_bar` table (PK
code, trade_date) in a scratch database. `to_sql` is timed on a sample and scaled (labelled).
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from benchmarks.common import Outcome, Row, Target
from benchmarks.sizes import Size
from stocksync_dagster.core.sources.demo_market import DemoMarket
from stocksync_dagster.core.validation import validate_bars
from stocksync_dagster.core.warehouse import Warehouse, schema
from stocksync_dagster.core.warehouse.upsert import upsert_frame

TARGET_OF_COPY = 0.70
TARGET_OVER_TO_SQL = 10.0
COLUMNS = [c.name for c in schema.daily_bar.columns]


def bars_frame(stocks: int, size: Size) -> pd.DataFrame:
    """A year of validated bars for `stocks` demo stocks, as the sync writes them."""
    market = DemoMarket(stocks, origin=size.start)
    good, _ = validate_bars(market.bars(size.start, size.end), size.start, size.end)
    return good[COLUMNS]


def _truncate(warehouse: Warehouse) -> None:
    with warehouse.begin() as connection:
        connection.exec_driver_sql("TRUNCATE daily_bar")


def _timed(action: Callable[[], object]) -> float:
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


def _raw_copy(warehouse: Warehouse, frame: pd.DataFrame) -> float:
    """COPY of a CSV built beforehand (not timed): what the server and driver can take."""
    text = frame.to_csv(index=False, header=False)

    def copy() -> None:
        with warehouse.engine.begin() as connection:
            raw = connection.connection.driver_connection
            sql = f"COPY daily_bar ({', '.join(COLUMNS)}) FROM STDIN (FORMAT csv)"
            with raw.cursor() as cursor, cursor.copy(sql) as stream:
                view = memoryview(text.encode())
                for offset in range(0, len(view), 1 << 20):
                    stream.write(view[offset : offset + (1 << 20)])

    return _timed(copy)


def _upsert(warehouse: Warehouse, frame: pd.DataFrame) -> float:
    def write() -> None:
        with warehouse.begin() as connection:
            upsert_frame(connection, schema.daily_bar, frame)

    return _timed(write)


def _to_sql(warehouse: Warehouse, frame: pd.DataFrame, method: str | None) -> float:
    # "multi" needs chunks: one statement may bind at most 65,535 parameters
    chunksize = 5000 if method == "multi" else None

    def write() -> None:
        with warehouse.engine.begin() as connection:
            frame.to_sql(
                "daily_bar",
                connection,
                if_exists="append",
                index=False,
                method=method,
                chunksize=chunksize,
            )

    return _timed(write)


def _changed(frame: pd.DataFrame) -> pd.DataFrame:
    changed = frame.copy()
    for column in ("open", "high", "low", "close", "amount"):
        changed[column] = changed[column] * 1.01
    return changed


def postgres_rows(url: str, size: Size) -> tuple[list[Row], dict[str, float]]:
    frame = bars_frame(size.write_rows_stocks, size)
    n = len(frame)
    warehouse = Warehouse(url)
    warehouse.ensure_schema()
    rows: list[Row] = []
    rates: dict[str, float] = {}

    def add(key: str, case: str, seconds: float, count: int, note: str = "", ext: bool = False):
        rows.append(Row("writes", case, seconds, rows=count, note=note, extrapolated=ext))
        rates[key] = count / seconds

    _truncate(warehouse)
    copy_seconds = _raw_copy(warehouse, frame)
    add("copy", "PG raw COPY, CSV prebuilt, empty table (the limit)", copy_seconds, n)
    _truncate(warehouse)
    add("new", "PG our upsert, empty table", _upsert(warehouse, frame), n, "binary COPY path")
    add(
        "changed",
        "PG our upsert, every row conflicts (changed values)",
        _upsert(warehouse, _changed(frame)),
        n,
        "staging + ON CONFLICT DO UPDATE",
    )
    add("same", "PG our upsert, identical rows (0 written)", _upsert(warehouse, frame), n)
    sample = frame.head(size.to_sql_sample)
    for method, label in ((None, "default"), ("multi", 'method="multi", chunksize=5000')):
        _truncate(warehouse)
        seconds = _to_sql(warehouse, sample, method) * n / len(sample)
        note = f"timed on {len(sample):,} rows, scaled to {n:,}"
        add(f"to_sql_{label}", f"PG pandas.to_sql {label}", seconds, n, note, ext=True)
    _truncate(warehouse)
    warehouse.dispose()
    return rows, rates


def sqlite_rows(size: Size) -> list[Row]:
    frame = bars_frame(size.sqlite_stocks, size)
    n = len(frame)
    with tempfile.TemporaryDirectory(prefix="stocksync_bench_") as tmp:
        ours = Warehouse(f"sqlite:///{Path(tmp) / 'ours.db'}")
        ours_seconds = _upsert(ours, frame)
        ours.dispose()
        plain = Warehouse(f"sqlite:///{Path(tmp) / 'plain.db'}")
        plain.ensure_schema()
        plain.dispose()
        values = list(frame.astype(object).where(frame.notna(), None).itertuples(index=False))
        values = [(r[0], r[1].isoformat(), *r[2:]) for r in values]
        connection = sqlite3.connect(Path(tmp) / "plain.db")
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        placeholders = ", ".join("?" for _ in COLUMNS)
        sql = f"INSERT INTO daily_bar ({', '.join(COLUMNS)}) VALUES ({placeholders})"

        def insert() -> None:
            with connection:
                connection.executemany(sql, values)

        plain_seconds = _timed(insert)
        connection.close()
    return [
        Row("writes", "SQLite our upsert, empty table", ours_seconds, rows=n),
        Row(
            "writes",
            "SQLite plain executemany INSERT (rows prebuilt)",
            plain_seconds,
            rows=n,
            note="no conflict handling",
        ),
    ]


def run(size: Size, url: str | None) -> Outcome:
    out = Outcome(params={"pg_stocks": size.write_rows_stocks, "sqlite_stocks": size.sqlite_stocks})
    if url is not None:
        rows, rates = postgres_rows(url, size)
        out.rows += rows
        share = rates["new"] / rates["copy"]
        best_to_sql = max(v for k, v in rates.items() if k.startswith("to_sql"))
        out.targets += [
            Target(
                "writes",
                f"PG new-row upsert >= {TARGET_OF_COPY:.0%} of raw COPY rows/s",
                f"{share:.0%} ({rates['new']:,.0f} vs {rates['copy']:,.0f} rows/s)",
                share >= TARGET_OF_COPY,
            ),
            Target(
                "writes",
                f"PG new-row upsert >= {TARGET_OVER_TO_SQL:.0f}x the faster pandas.to_sql",
                f"{rates['new'] / best_to_sql:.1f}x",
                rates["new"] / best_to_sql >= TARGET_OVER_TO_SQL,
            ),
        ]
    out.rows += sqlite_rows(size)
    return out
