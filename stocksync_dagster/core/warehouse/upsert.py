"""Idempotent bulk upserts of normalised frames, inside the caller's transaction.

Rows are written in primary-key order (a (code, trade_date) B-tree then fills page by page).
PostgreSQL: when none of the frame's keys exist yet (a history load) the rows are binary-COPYed
straight into the table. Otherwise they are COPYed into a TEMP staging table and one
`INSERT ... SELECT ... ON CONFLICT DO UPDATE` writes only the staged rows that are new or
differ from the stored ones (an anti-join): an identical rerun touches no tuple and writes
(almost) no WAL. `RETURNING (xmax = 0)` tells inserted from updated rows. The COPY data is
built column-wise with numpy when every row has the same layout (no NULLs, fixed-width ASCII
text), else row by row with `write_row`; either way in chunks, so memory stays bounded.
SQLite: one `executemany` of `INSERT ... ON CONFLICT DO UPDATE ... WHERE` changed; counts
from the statement's row count and the rows in the frame's date range before and after.

Revisions: for a table with a revision table (`schema.REVISION_TABLES`), a stored row whose
value columns (`schema.REVISED_COLUMNS`) change keeps its old and new values there, written in
the same transaction: on PostgreSQL by a CTE of the merge statement itself, on SQLite by one
`INSERT ... SELECT` from a TEMP staging table before the upsert (only when the range already
has rows).
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from stocksync_dagster.core.warehouse.schema import REVISED_COLUMNS, REVISION_TABLES

_PG_BINARY_TYPES = {
    sa.String: "text",
    sa.Date: "date",
    sa.Double: "float8",
    sa.Float: "float8",
    sa.BigInteger: "int8",
    sa.Integer: "int4",
    sa.Boolean: "bool",
}
# Rows per conversion batch: bounds the memory of a large write to a few tens of MB.
CHUNK_ROWS = 100_000
_MERGE_WORK_MEM = "128MB"  # SET LOCAL: until the writing transaction ends
_PG_EPOCH_ORDINAL = dt.date(2000, 1, 1).toordinal()  # binary COPY dates count days from here
_UNIX_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_BINARY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
_BINARY_TRAILER = b"\xff\xff"


@dataclass(frozen=True)
class UpsertStats:
    """What a write did: rows new, rows whose values changed, rows already identical."""

    inserted: int
    updated: int
    unchanged: int
    revised: int = field(default=0, compare=False)
    """Updated rows whose value columns changed, kept in the table's revision table (not part
    of equality: stats compare as rows written, whether or not the table keeps revisions)."""

    @property
    def written(self) -> int:
        return self.inserted + self.updated


@dataclass(frozen=True)
class _RevisionLog:
    """Where and how an upsert keeps the previous values of the rows it changes."""

    table: sa.Table
    columns: list[str]
    revised_at: dt.datetime
    run_id: str | None

    def target_columns(self) -> list[str]:
        return [
            "code",
            "trade_date",
            *[f"old_{c}" for c in self.columns],
            *[f"new_{c}" for c in self.columns],
            "revised_at",
            "run_id",
        ]

    def stamp(self) -> list[sa.ColumnElement]:
        return [
            sa.literal(self.revised_at, self.table.c.revised_at.type),
            sa.literal(self.run_id, self.table.c.run_id.type),
        ]


def upsert_frame(
    connection: sa.Connection,
    table: sa.Table,
    frame: pd.DataFrame,
    *,
    run_id: str | None = None,
    revised_at: dt.datetime | None = None,
) -> UpsertStats:
    """Insert or update `frame`'s rows by primary key; rows with identical values are left alone.

    Rows of a table with a revision table whose values change keep their previous values
    there, stamped `revised_at` (default now, UTC) and `run_id`.
    """
    if frame.empty:
        return UpsertStats(0, 0, 0)
    keys = [c.name for c in table.primary_key.columns]
    columns = [c.name for c in table.columns if c.name in frame.columns]
    rows = _Rows(frame, keys, table.name)
    revision = None
    if table.name in REVISION_TABLES:
        revision = _RevisionLog(
            REVISION_TABLES[table.name],
            [c for c in REVISED_COLUMNS[table.name] if c in columns],
            revised_at or dt.datetime.now(dt.UTC),
            run_id,
        )
    if connection.dialect.name == "postgresql":
        return _pg_upsert(connection, table, columns, keys, rows, revision)
    return _sqlite_upsert(connection, table, columns, keys, rows, revision)


class _Rows:
    """A frame to write, its rows' primary-key order and the keys' distinct values.

    Rows written in primary-key order fill the B-tree page by page instead of at random.
    Raises ValueError on a duplicate key.
    """

    def __init__(self, frame: pd.DataFrame, keys: list[str], name: str) -> None:
        self.frame = frame
        self.factors = {k: pd.factorize(frame[k], sort=True) for k in keys}
        codes = [self.factors[k][0] for k in keys]
        self.order = np.lexsort(codes[::-1])
        if len(frame) > 1:
            same = np.ones(len(frame) - 1, dtype=bool)
            for c in codes:
                ordered = c[self.order]
                same &= ordered[1:] == ordered[:-1]
            if same.any():
                raise ValueError(f"{name}: the frame has duplicate {', '.join(keys)} rows")

    def __len__(self) -> int:
        return len(self.frame)


def _pg_upsert(
    connection: sa.Connection,
    table: sa.Table,
    columns: list[str],
    keys: list[str],
    rows: _Rows,
    revision: _RevisionLog | None = None,
) -> UpsertStats:
    _lock_table_writes(connection, table)
    bounds = _date_bounds(table, rows.frame)
    if not _any_key_exists(connection, table, bounds):
        _pg_copy(connection, table.name, table, columns, rows)
        return UpsertStats(len(rows), 0, 0)
    stage = _staging_table(table, columns)
    stage.create(connection)
    _pg_copy(connection, stage.name, table, columns, rows)
    # the anti-join hashes the range's stored rows: in memory, not in batches spilled to disk
    connection.exec_driver_sql(f"SET LOCAL work_mem = '{_MERGE_WORK_MEM}'")
    inserted, updated, revised = connection.execute(
        _pg_merge_statement(table, stage, columns, keys, bounds, revision)
    ).one()
    stage.drop(connection)  # not left for commit: a transaction may write the table again
    return UpsertStats(inserted, updated, len(rows) - inserted - updated, revised)


def _pg_merge_statement(
    table: sa.Table,
    stage: sa.Table,
    columns: list[str],
    keys: list[str],
    bounds: tuple[str, object, object] | None,
    revision: _RevisionLog | None = None,
) -> sa.Select:
    """Insert/update only the staged rows that are new or differ; count each kind.

    With `revision`, a CTE keeps the old and new values of stored rows whose value columns
    change (the CTEs read the table as it was before the statement).
    """
    changing = [c for c in columns if c not in keys]
    on = [table.c[k] == stage.c[k] for k in keys]
    if bounds is not None:  # lets the planner read only the range's part of the table
        name, low, high = bounds
        on.append(table.c[name].between(low, high))
    differs = sa.tuple_(*[table.c[c] for c in changing]).is_distinct_from(
        sa.tuple_(*[stage.c[c] for c in changing])
    )
    new_or_changed = (
        sa.or_(table.c[keys[0]].is_(None), differs) if changing else table.c[keys[0]].is_(None)
    )
    joined = stage.outerjoin(table, sa.and_(*on))
    revised: sa.ColumnElement = sa.literal(0)
    if revision is not None and revision.columns:
        value_differs = sa.tuple_(*[table.c[c] for c in revision.columns]).is_distinct_from(
            sa.tuple_(*[stage.c[c] for c in revision.columns])
        )
        changes = (
            sa.select(
                *[stage.c[c].label(c) for c in columns],
                *[table.c[c].label(f"old_{c}") for c in revision.columns],
                sa.and_(table.c[keys[0]].is_not(None), value_differs).label("is_revision"),
            )
            .select_from(joined)
            .where(new_or_changed)
            .cte("changes")
        )
        kept = (
            sa.insert(revision.table)
            .from_select(
                revision.target_columns(),
                sa.select(
                    changes.c.code,
                    changes.c.trade_date,
                    *[changes.c[f"old_{c}"] for c in revision.columns],
                    *[changes.c[c] for c in revision.columns],
                    *revision.stamp(),
                ).where(changes.c.is_revision),
            )
            .returning(revision.table.c.id)
            .cte("revised")
        )
        revised = sa.select(sa.func.count()).select_from(kept).scalar_subquery()
        source = sa.select(*[changes.c[c] for c in columns])
    else:
        source = sa.select(*[stage.c[c] for c in columns]).select_from(joined).where(new_or_changed)
    stmt = postgresql.insert(table).from_select(columns, source)
    if changing:
        stmt = stmt.on_conflict_do_update(
            index_elements=keys, set_={c: stmt.excluded[c] for c in changing}
        )
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=keys)
    # xmax = 0 only on a freshly inserted tuple; an ON CONFLICT update sets it
    written = stmt.returning(sa.literal_column("xmax = 0").label("new")).cte("written")
    new = written.c.new
    return sa.select(
        sa.func.count().filter(new).label("inserted"),
        sa.func.count().filter(sa.not_(new)).label("updated"),
        revised.label("revised"),
    ).select_from(written)


def _sqlite_upsert(
    connection: sa.Connection,
    table: sa.Table,
    columns: list[str],
    keys: list[str],
    rows: _Rows,
    revision: _RevisionLog | None = None,
) -> UpsertStats:
    changing = [c for c in columns if c not in keys]
    stmt = sqlite.insert(table).values({c: sa.bindparam(c) for c in columns})
    if changing:
        stmt = stmt.on_conflict_do_update(
            index_elements=keys,
            set_={c: stmt.excluded[c] for c in changing},
            where=sa.or_(*[table.c[c].is_distinct_from(stmt.excluded[c]) for c in changing]),
        )
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=keys)
    compiled = stmt.compile(dialect=connection.dialect)
    bound = list(compiled.positiontup or [])
    bounds = _date_bounds(table, rows.frame)
    before = _rows_in(connection, table, bounds)
    revised = 0
    if before and revision is not None and revision.columns:
        revised = _sqlite_keep_revisions(connection, table, columns, keys, rows, revision)
    cursor = connection.connection.cursor()
    written = 0
    try:
        for values in _python_chunks(rows, table, bound, dates_as_text=True):
            # an iterator, not a list: zip reuses one tuple per row while sqlite3 binds it
            cursor.executemany(str(compiled), zip(*values, strict=True))  # type: ignore[arg-type]
            written += cursor.rowcount
    finally:
        cursor.close()
    if before == 0 or written == 0:  # every written row is new / nothing was inserted
        inserted = written
    else:
        inserted = _rows_in(connection, table, bounds) - before  # an upsert never deletes
    return UpsertStats(inserted, written - inserted, len(rows) - written, revised)


def _sqlite_keep_revisions(
    connection: sa.Connection,
    table: sa.Table,
    columns: list[str],
    keys: list[str],
    rows: _Rows,
    revision: _RevisionLog,
) -> int:
    """Stage the rows in a TEMP table and keep the old values of the stored rows they change."""
    stage = _staging_table(table, columns)
    stage.drop(connection, checkfirst=True)
    stage.create(connection)
    try:
        compiled = (
            sa.insert(stage)
            .values({c: sa.bindparam(c) for c in columns})
            .compile(dialect=connection.dialect)
        )
        bound = list(compiled.positiontup or [])
        cursor = connection.connection.cursor()
        try:
            for values in _python_chunks(rows, table, bound, dates_as_text=True):
                cursor.executemany(str(compiled), zip(*values, strict=True))  # type: ignore[arg-type]
        finally:
            cursor.close()
        differs = sa.or_(*[table.c[c].is_distinct_from(stage.c[c]) for c in revision.columns])
        statement = sa.insert(revision.table).from_select(
            revision.target_columns(),
            sa.select(
                table.c.code,
                table.c.trade_date,
                *[table.c[c] for c in revision.columns],
                *[stage.c[c] for c in revision.columns],
                *revision.stamp(),
            )
            .select_from(stage.join(table, sa.and_(*[table.c[k] == stage.c[k] for k in keys])))
            .where(differs),
        )
        return int(connection.execute(statement).rowcount)
    finally:
        stage.drop(connection)


def _rows_in(
    connection: sa.Connection, table: sa.Table, bounds: tuple[str, object, object] | None
) -> int:
    query = sa.select(sa.func.count()).select_from(table)
    if bounds is not None:
        name, low, high = bounds
        query = query.where(table.c[name].between(low, high))
    return int(connection.execute(query).scalar_one())


def _staging_table(table: sa.Table, columns: list[str]) -> sa.Table:
    return sa.Table(
        f"stage_{table.name}",
        sa.MetaData(),
        *[sa.Column(c, table.c[c].type) for c in columns],
        prefixes=["TEMPORARY"],
        postgresql_on_commit="DROP",
    )


def _lock_table_writes(connection: sa.Connection, table: sa.Table) -> None:
    """Serialise writers of one table until commit: concurrent reruns queue, never deadlock."""
    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock(hashtext('stocksync.{table.name}'))")


def _date_bounds(table: sa.Table, frame: pd.DataFrame) -> tuple[str, object, object] | None:
    """(date key, first, last day) of `frame`, or None when the key has no date column."""
    keys = [c.name for c in table.primary_key.columns]
    name = next((k for k in keys if isinstance(table.c[k].type, sa.Date)), None)
    if name is None:
        return None
    days = frame[name]
    return name, _as_date(days.min()), _as_date(days.max())


def _any_key_exists(
    connection: sa.Connection, table: sa.Table, bounds: tuple[str, object, object] | None
) -> bool:
    query = sa.select(sa.literal(1)).select_from(table)
    if bounds is not None:
        name, low, high = bounds
        query = query.where(table.c[name].between(low, high))
    return connection.execute(query.limit(1)).first() is not None


def _pg_copy(
    connection: sa.Connection,
    target: str,
    table: sa.Table,
    columns: list[str],
    rows: _Rows,
) -> None:
    raw = connection.connection.driver_connection
    assert raw is not None, "a live DBAPI connection"
    sql = f"COPY {target} ({', '.join(columns)}) FROM STDIN"
    if raw.__class__.__module__.startswith("psycopg2"):
        with raw.cursor() as cursor:
            for values in _python_chunks(rows, table, columns):
                buffer = io.StringIO()
                pd.DataFrame(dict(zip(columns, values, strict=True))).to_csv(
                    buffer, index=False, header=False
                )
                buffer.seek(0)
                cursor.copy_expert(f"{sql} WITH (FORMAT csv)", buffer)
        return
    blocks = _binary_blocks(rows.frame, table, columns, rows.order)
    with raw.cursor() as cursor, cursor.copy(f"{sql} (FORMAT BINARY)") as copy:
        if blocks is not None:  # the whole COPY stream, built with numpy
            for block in blocks:
                copy.write(block)
            return
        copy.set_types([_pg_binary_type(table.c[c].type) for c in columns])
        for values in _python_chunks(rows, table, columns):
            for row in zip(*values, strict=True):
                copy.write_row(row)


def _binary_blocks(
    frame: pd.DataFrame, table: sa.Table, columns: list[str], order: np.ndarray | None = None
) -> Iterator[bytes] | None:
    """`frame` (rows in `order`) as PostgreSQL binary COPY data built with numpy (~5x `write_row`).

    None when a row would not have a fixed layout: a NULL, or text of varying length or not
    ASCII. Then the caller falls back to `write_row`.
    """
    arrays = []
    for name in columns:
        array = _fixed_width(frame[name], table.c[name].type)
        if array is None:
            return None
        arrays.append(array)
    positions = np.arange(len(frame)) if order is None else order
    layout: list[tuple[str, Any]] = [("count", ">i2")]
    for i, array in enumerate(arrays):
        kind = array.dtype if array.dtype.kind == "S" else array.dtype.newbyteorder(">")
        layout += [(f"n{i}", ">i4"), (f"v{i}", kind)]
    dtype = np.dtype(layout)

    def blocks() -> Iterator[bytes]:
        yield _BINARY_SIGNATURE
        for start in range(0, len(frame), CHUNK_ROWS):
            rows = positions[start : start + CHUNK_ROWS]
            part = np.empty(len(rows), dtype=dtype)
            part["count"] = len(arrays)
            for i, array in enumerate(arrays):
                part[f"n{i}"] = array.dtype.itemsize
                part[f"v{i}"] = array[rows]
            yield part.tobytes()
        yield _BINARY_TRAILER

    return blocks()


def _fixed_width(series: pd.Series, column_type: sa.types.TypeEngine) -> np.ndarray | None:
    """The column as a numpy array of its binary COPY values, or None (see `_binary_blocks`)."""
    if series.isna().any():
        return None
    if isinstance(column_type, sa.Double | sa.Float):
        return series.to_numpy(dtype=np.float64)
    if isinstance(column_type, sa.BigInteger | sa.Integer):
        if not pd.api.types.is_integer_dtype(series.dtype):
            return None
        width = np.int64 if isinstance(column_type, sa.BigInteger) else np.int32
        return series.to_numpy(dtype=width)
    if isinstance(column_type, sa.Boolean):
        return series.to_numpy(dtype=np.bool_) if pd.api.types.is_bool_dtype(series) else None
    if isinstance(column_type, sa.Date):
        return _pg_days(series)
    if isinstance(column_type, sa.String):
        codes, uniques = pd.factorize(series)
        try:
            text = np.array(list(uniques), dtype=np.bytes_)[codes]  # raises on non-ASCII
        except (UnicodeEncodeError, TypeError, ValueError):
            return None
        lengths = np.char.str_len(text)
        if len(text) and (lengths.min() != lengths.max() or lengths.min() == 0):
            return None
        return text
    return None


def _pg_days(series: pd.Series) -> np.ndarray | None:
    """Days since 2000-01-01 (int32), or None for values that are not dates."""
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        days = series.to_numpy(dtype="datetime64[D]").astype(np.int64)
        return (days + (_UNIX_EPOCH_ORDINAL - _PG_EPOCH_ORDINAL)).astype(np.int32)
    codes, uniques = pd.factorize(series)
    try:
        ordinals = np.fromiter((d.toordinal() for d in uniques), np.int64, len(uniques))
    except (AttributeError, TypeError, ValueError):
        return None
    return (ordinals - _PG_EPOCH_ORDINAL).astype(np.int32)[codes]


def _pg_binary_type(column_type: sa.types.TypeEngine) -> str:
    for sa_type, pg_type in _PG_BINARY_TYPES.items():
        if isinstance(column_type, sa_type):
            return pg_type
    raise TypeError(f"no COPY type for {column_type!r}")


def _python_chunks(
    rows: _Rows,
    table: sa.Table,
    columns: list[str],
    *,
    dates_as_text: bool = False,
) -> Iterator[list[list]]:
    """Column-wise Python values (None for missing) in the types the driver expects, in key
    order, `CHUNK_ROWS` rows at a time.

    Vectorised: numbers through numpy, text and dates converted once per distinct value.
    `dates_as_text` gives ISO `YYYY-MM-DD` strings (how SQLite stores a DATE).
    """
    converted = [
        _driver_values(rows.frame[c], table.c[c].type, dates_as_text, rows.factors.get(c))
        for c in columns
    ]
    for start in range(0, len(rows), CHUNK_ROWS):
        positions = rows.order[start : start + CHUNK_ROWS]
        yield [take(positions) for take in converted]


def _driver_values(
    series: pd.Series,
    column_type: sa.types.TypeEngine,
    dates_as_text: bool,
    factors: tuple[np.ndarray, Any] | None = None,
) -> Callable[[np.ndarray], list]:
    """A function giving the column's driver values at some row positions.

    `factors`: the column's `pd.factorize`, when already computed (the key columns).
    """
    if isinstance(column_type, sa.Double | sa.Float):
        return _with_nulls(series.to_numpy(dtype=np.float64, na_value=np.nan), series)
    if isinstance(column_type, sa.Integer | sa.BigInteger) and not (
        pd.api.types.is_float_dtype(series.dtype) and series.isna().any()
    ):
        return _with_nulls(series.to_numpy(dtype=np.int64, na_value=0), series)
    if isinstance(column_type, sa.Integer | sa.BigInteger):
        convert: Callable[[Any], object] = int
    elif isinstance(column_type, sa.Date):
        convert = _iso_date if dates_as_text else _as_date
    elif isinstance(column_type, sa.Boolean):
        convert = bool
    else:
        convert = str
    codes, uniques = factors or pd.factorize(series, use_na_sentinel=True)
    lookup = np.empty(len(uniques) + 1, dtype=object)
    lookup[:-1] = [convert(v) for v in uniques]
    lookup[-1] = None  # code -1 = missing
    return lambda rows: lookup[codes[rows]].tolist()


def _with_nulls(array: np.ndarray, series: pd.Series) -> Callable[[np.ndarray], list]:
    missing = series.isna().to_numpy()
    if not missing.any():
        return lambda rows: array[rows].tolist()

    def take(rows: np.ndarray) -> list:
        values = array[rows].astype(object)
        values[missing[rows]] = None
        return values.tolist()

    return take


def _iso_date(value: object) -> str | None:
    day = _as_date(value)
    return None if day is None else day.isoformat()


def _as_date(value: object) -> dt.date | None:
    if value is None or value is pd.NaT or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, pd.Timestamp):
        return value.date()
    return dt.date.fromisoformat(str(value))
