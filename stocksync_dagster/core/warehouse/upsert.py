"""Idempotent bulk upserts of normalised frames, inside the caller's transaction.

Rows are written in primary-key order (a (code, trade_date) B-tree then fills page by page).
"The frame's key range" is its first..last day and first..last code: every stored row its keys
can match lies in it, and a stock batch of a history load owns its own codes' part.

PostgreSQL: when no stored row lies in the frame's key range (a history load, batch by batch)
the rows are binary-COPYed straight into the table. Otherwise, for a (code, trade_date)
table, the server hashes each stock's stored rows of the range while the same digests of the
frame are computed here; the stocks whose digests match are left out (an identical rerun ends
there, touching no tuple and writing no WAL). The remaining rows are COPYed into a TEMP
staging table and one `INSERT ... SELECT ... ON CONFLICT DO UPDATE` writes only the staged
rows that are new or differ from the stored ones: a merge join of the staged rows with the key
range's stored rows, both read in key order. `RETURNING (xmax = 0)` tells inserted from
updated rows. The COPY data is built column-wise with numpy when every row has the same layout
(no NULLs, fixed-width ASCII text), else row by row with `write_row`; either way in chunks
(sent by a psycopg thread while the next is built), so memory stays bounded.

SQLite: `executemany` of `INSERT ... VALUES` 32 rows `ON CONFLICT DO UPDATE ... WHERE` changed
(a plain one-row `INSERT` when no stored row lies in the key range), first on its own inside a
savepoint: an identical rerun ends there. At the first chunk that writes a row it is rolled
back to the savepoint and run again with TEMP triggers that count the updated rows (see
`_sqlite_upsert`).

Revisions: for a table with a revision table (`schema.REVISION_TABLES`), a stored row whose
value columns (`schema.REVISED_COLUMNS`) change keeps its old and new values there, written in
the same transaction: on PostgreSQL by a CTE of the merge statement itself, on SQLite by one of
those TEMP triggers, which live for the one upsert.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from psycopg.copy import QueuedLibpqWriter
from sqlalchemy.dialects import postgresql, sqlite

from stocksync_dagster.core.warehouse.schema import REVISED_COLUMNS, REVISION_TABLES

# binary COPY type, its send function and its width (0: varying) per column type; the send
# functions give the stocks' digests (`_stocks_to_write`) the bytes of a binary COPY value
_PG_BINARY_TYPES: dict[type, tuple[str, str, int]] = {
    sa.String: ("text", "textsend", 0),
    sa.Date: ("date", "date_send", 4),
    sa.Double: ("float8", "float8send", 8),
    sa.Float: ("float8", "float8send", 8),
    sa.BigInteger: ("int8", "int8send", 8),
    sa.Integer: ("int4", "int4send", 4),
    sa.Boolean: ("bool", "boolsend", 1),
}
# Rows per conversion batch: bounds the memory of a large write to a few tens of MB.
CHUNK_ROWS = 100_000
_MERGE_WORK_MEM = "256MB"  # SET LOCAL: until the writing transaction ends
# for the merge statement only: a merge join, and no JIT compilation (it costs more than it saves)
_MERGE_PLANNER_OFF = ("enable_hashjoin", "enable_nestloop", "jit")
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
    """A frame to write, its rows' primary-key order and the keys' distinct values
    (`factors`: `pd.factorize` by column, the keys' sorted; others added once computed).

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
    bounds = _key_bounds(table, rows)
    if not _any_key_exists(connection, table, bounds):
        _pg_copy(connection, table.name, table, columns, rows)
        return UpsertStats(len(rows), 0, 0)
    total = len(rows)
    rows = _stocks_to_write(connection, table, columns, keys, rows, bounds)
    if not len(rows):  # every stock's stored rows are byte for byte the frame's
        return UpsertStats(0, 0, total)
    bounds = _key_bounds(table, rows)
    stage = _staging_table(table, columns)
    stage.create(connection)
    _pg_copy(connection, stage.name, table, columns, rows)
    # the anti-join sorts or hashes the range's stored rows: in memory, not spilled to disk
    connection.exec_driver_sql(f"SET LOCAL work_mem = '{_MERGE_WORK_MEM}'")
    # A merge join on the key: the staged rows arrive in key order and the table's stored rows
    # are read in key order from its primary key (~1.5x faster than hashing every stored row of
    # a large range). Forced, because the planner has no statistics of the fresh staging table:
    # left to choose, it may pick a nested loop over a scan of the range, quadratic in rows.
    saved = _set_local(connection, dict.fromkeys(_MERGE_PLANNER_OFF, "off"))
    inserted, updated, revised = connection.execute(
        _pg_merge_statement(table, stage, columns, keys, bounds, revision)
    ).one()
    _set_local(connection, saved)  # the rest of the transaction plans as before
    stage.drop(connection)  # not left for commit: a transaction may write the table again
    return UpsertStats(inserted, updated, total - inserted - updated, revised)


def _stocks_to_write(
    connection: sa.Connection,
    table: sa.Table,
    columns: list[str],
    keys: list[str],
    rows: _Rows,
    bounds: Bounds,
) -> _Rows:
    """The frame's rows less those of stocks whose stored rows in the key range are the same.

    For a (code, trade_date) table: a SHA-256 per stock of its rows' binary values in date
    order, computed by the server over the stored rows (`float8send`, `date_send`, ...) while
    the same digests of the frame are computed here. A stock whose digests match has exactly
    the frame's rows stored, so the merge would leave all of them alone; its rows are not
    staged (an identical rerun stages nothing). A mismatch only means the stock is staged and
    compared row by row as before. Frames without a fixed binary layout (a NULL text, text of
    varying length, a float in an integer column) are staged whole.
    """
    if [table.c[k].type.__class__ for k in keys] != [sa.String, sa.Date] or keys[0] != "code":
        return rows
    values = [c for c in columns if c not in keys]
    fields = _digest_fields(rows, table, [keys[1], *values])
    if fields is None:
        return rows
    quote = connection.dialect.identifier_preparer.quote
    row_bytes = " || ".join(_send_sql(table.c[c], quote(c)) for c in [keys[1], *values])
    sql = (
        f"SELECT code, sha256(string_agg({row_bytes}, ''::bytea ORDER BY {quote(keys[1])})) "
        f"FROM {quote(table.name)} WHERE "
        + " AND ".join(f"{quote(name)} BETWEEN %s AND %s" for name, _, _ in bounds)
        + " GROUP BY code"
    )
    params = [value for _, low, high in bounds for value in (low, high)]
    saved = _set_local(connection, {"jit": "off"})
    # the server hashes while this thread does; the connection is the other thread's meanwhile
    with ThreadPoolExecutor(max_workers=1) as pool:
        stored = pool.submit(_stored_digests, connection, sql, params)
        mine = _stock_digests(rows, _packed_rows(rows, fields))
        theirs = stored.result()
    _set_local(connection, saved)
    codes, uniques = rows.factors["code"]
    differ = [i for i, code in enumerate(uniques) if theirs.get(code) != mine[i]]
    if len(differ) == len(uniques):
        return rows
    keep = np.isin(codes, differ)
    return _Rows(rows.frame[keep], keys, table.name)


def _send_sql(column: sa.Column, name: str) -> str:
    """SQL of a column's binary value, as `_packed_rows` packs it (a NULL flag when nullable)."""
    _, function, width = _pg_binary_type(column.type)
    value = f"{function}({name})"
    if isinstance(column.type, sa.String):
        value = f"int4send(octet_length({name})) || {value}"
    if not column.nullable:
        return value
    null = "'\\x00'::bytea" + (f" || '\\x{'00' * width}'::bytea" if width else "")
    return f"coalesce('\\x01'::bytea || {value}, {null})"


def _digest_fields(
    rows: _Rows, table: sa.Table, columns: list[str]
) -> list[tuple[sa.Column, np.ndarray, np.ndarray | None]] | None:
    """Each column as (column, binary COPY values, which rows are not NULL or None), in frame
    order; None when a row would have no fixed layout (a NULL other than a nullable number,
    text of varying length)."""
    fields = []
    for name in columns:
        column, series = table.c[name], rows.frame[name]
        missing = series.isna().to_numpy()
        present = None
        if missing.any():
            if not (column.nullable and isinstance(column.type, sa.Double | sa.Float)):
                return None
            present, series = ~missing, series.fillna(0.0)
        factors = rows.factors.get(name) if present is None else None
        array = _fixed_width(series, column.type, factors)
        if array is None:
            return None
        fields.append((column, array, present))
    return fields


def _packed_rows(
    rows: _Rows, fields: list[tuple[sa.Column, np.ndarray, np.ndarray | None]]
) -> np.ndarray:
    """The rows in key order, one record each of the bytes `_send_sql` gives for them."""
    layout: list[tuple[str, Any]] = []
    for i, (column, array, _) in enumerate(fields):
        if column.nullable:
            layout.append((f"f{i}", "u1"))
        if isinstance(column.type, sa.String):
            layout.append((f"n{i}", ">i4"))
        kind = array.dtype if array.dtype.kind == "S" else array.dtype.newbyteorder(">")
        layout.append((f"v{i}", kind))
    packed = np.empty(len(rows), dtype=np.dtype(layout))
    for i, (column, array, present) in enumerate(fields):
        if column.nullable:
            packed[f"f{i}"] = 1 if present is None else present[rows.order]
        if isinstance(column.type, sa.String):
            packed[f"n{i}"] = array.dtype.itemsize
        packed[f"v{i}"] = array[rows.order]
    return packed


def _stock_digests(rows: _Rows, packed: np.ndarray) -> list[bytes]:
    """SHA-256 of each stock's packed rows (in date order), by the stock's factor code."""
    codes = rows.factors["code"][0][rows.order]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    ends = np.r_[starts[1:], len(codes)]
    data = memoryview(packed.tobytes())
    size = packed.dtype.itemsize
    digests = [b""] * len(rows.factors["code"][1])
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        digests[codes[start]] = hashlib.sha256(data[start * size : end * size]).digest()
    return digests


def _stored_digests(connection: sa.Connection, sql: str, params: list[object]) -> dict[str, bytes]:
    result = connection.exec_driver_sql(sql, tuple(params))
    return {code: bytes(digest) for code, digest in result}


def _set_local(connection: sa.Connection, settings: dict[str, str]) -> dict[str, str]:
    """Set PostgreSQL settings until the transaction ends; returns their values before."""
    names = {f"n{i}": name for i, name in enumerate(settings)}
    values = {f"v{i}": value for i, value in enumerate(settings.values())}
    old = connection.execute(
        sa.text("SELECT " + ", ".join(f"current_setting(:{n})" for n in names)), names
    ).one()
    calls = ", ".join(f"set_config(:n{i}, :v{i}, true)" for i in range(len(names)))
    connection.execute(sa.text(f"SELECT {calls}"), names | values)
    return dict(zip(settings, old, strict=True))


def _pg_merge_statement(
    table: sa.Table,
    stage: sa.Table,
    columns: list[str],
    keys: list[str],
    bounds: Bounds,
    revision: _RevisionLog | None = None,
) -> sa.Select:
    """Insert/update only the staged rows that are new or differ; count each kind.

    With `revision`, a CTE keeps the old and new values of stored rows whose value columns
    change (the CTEs read the table as it was before the statement).
    """
    changing = [c for c in columns if c not in keys]
    on = [table.c[k] == stage.c[k] for k in keys] + _within(table, bounds)
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
    """No stored row in the key range: one plain INSERT. Otherwise the upsert runs first on its
    own, which is all an identical rerun needs; as soon as it writes anything it is rolled back
    to a savepoint and run again with the write log (TEMP triggers that count the updated rows
    and keep their revisions). Triggers on the table slow every row of an upsert, even rows they
    do not fire for, so only a write that changes something pays for them."""
    stored = _any_key_exists(connection, table, _key_bounds(table, rows))
    if not stored:  # no key can conflict (a history load)
        insert = _SqliteStatements(connection, table, columns, keys, rows, upsert=False)
        written = _sqlite_execute(connection, insert, rows)
        return UpsertStats(written, 0, len(rows) - written)
    upsert = _SqliteStatements(connection, table, columns, keys, rows, upsert=True)
    connection.exec_driver_sql(f"SAVEPOINT {_SQLITE_SAVEPOINT}")
    if _sqlite_execute(connection, upsert, rows, until_written=True) == 0:  # all identical
        connection.exec_driver_sql(f"RELEASE {_SQLITE_SAVEPOINT}")
        return UpsertStats(0, 0, len(rows))
    connection.exec_driver_sql(f"ROLLBACK TO {_SQLITE_SAVEPOINT}")
    _sqlite_write_log(connection, table, revision)
    try:
        written = _sqlite_execute(connection, upsert, rows)
        updated, revised = _sqlite_write_counts(connection, table)
    finally:
        _drop_sqlite_write_log(connection, table)
    connection.exec_driver_sql(f"RELEASE {_SQLITE_SAVEPOINT}")
    return UpsertStats(written - updated, updated, len(rows) - written, revised)


_SQLITE_SAVEPOINT = "stocksync_upsert"
# Rows per upsert statement (a multi-row VALUES): SQLite then runs one statement, its cursors
# kept open, per this many rows, ~1.6x faster than one per row. Not for a plain INSERT of new
# rows: SQLite 3.40 inserts a multi-row VALUES ~1.3x slower than one row per statement.
_SQLITE_UPSERT_ROWS = 32
# Rows per conversion batch on SQLite: Python values bound while still in the CPU's cache
# (~1.5x faster to build than `CHUNK_ROWS`); a multiple of `_SQLITE_UPSERT_ROWS`.
_SQLITE_CHUNK_ROWS = 8192


class _SqliteStatements:
    """The SQL of an INSERT (with `upsert`: `ON CONFLICT DO UPDATE` of changed rows only) of
    `columns`, by rows per statement: `_SQLITE_UPSERT_ROWS` for an upsert, else 1.

    A text column holding one same value in every row is a literal of the statement, not a
    parameter bound row by row (`bound`: the columns that are).
    """

    def __init__(
        self,
        connection: sa.Connection,
        table: sa.Table,
        columns: list[str],
        keys: list[str],
        rows: _Rows,
        *,
        upsert: bool,
    ) -> None:
        self.connection = connection
        self.table = table
        self.columns = columns
        self.constants = _constant_texts(rows, table, [c for c in columns if c not in keys])
        self.bound = [c for c in columns if c not in self.constants]
        self.changing = [c for c in columns if c not in keys] if upsert else None
        self.keys = keys
        # at most 999 parameters a statement (SQLite's limit before 3.32)
        self.rows = (
            max(1, min(_SQLITE_UPSERT_ROWS, 999 // max(1, len(self.bound)))) if upsert else 1
        )
        self._sql: dict[int, str] = {}

    def sql(self, rows: int) -> str:
        """The statement writing `rows` rows, parameters row by row in `bound` order."""
        if rows not in self._sql:
            names = [[f"{c}_{i}" for c in self.bound] for i in range(rows)]
            literals: dict[str, sa.ColumnElement[Any]] = {
                c: sa.literal_column(_sqlite_text(v)) for c, v in self.constants.items()
            }
            stmt = sqlite.insert(self.table).values(
                [
                    {
                        c: literals[c] if c in literals else sa.bindparam(f"{c}_{i}")
                        for c in self.columns
                    }
                    for i in range(rows)
                ]
            )
            if self.changing:
                stmt = stmt.on_conflict_do_update(
                    index_elements=self.keys,
                    set_={c: stmt.excluded[c] for c in self.changing},
                    where=sa.or_(
                        *[self.table.c[c].is_distinct_from(stmt.excluded[c]) for c in self.changing]
                    ),
                )
            elif self.changing is not None:  # only key columns
                stmt = stmt.on_conflict_do_nothing(index_elements=self.keys)
            compiled = stmt.compile(dialect=self.connection.dialect)
            assert compiled.positiontup == [n for row in names for n in row], "row-major"
            self._sql[rows] = str(compiled)
        return self._sql[rows]


def _constant_texts(rows: _Rows, table: sa.Table, columns: list[str]) -> dict[str, str]:
    """The text `columns` holding one same value (no NULL) in every row, and that value.

    Their factorization is kept in `rows.factors` for the conversion of the others."""
    constants = {}
    for c in columns:
        if not isinstance(table.c[c].type, sa.String):
            continue
        if c not in rows.factors:
            rows.factors[c] = pd.factorize(rows.frame[c])
        codes, uniques = rows.factors[c]
        value = uniques[0] if len(uniques) == 1 else None
        if isinstance(value, str) and "\x00" not in value and codes.min() == 0:
            constants[c] = value
    return constants


def _sqlite_text(value: str) -> str:
    """`value` as an SQLite string literal."""
    return "'" + value.replace("'", "''") + "'"


def _sqlite_execute(
    connection: sa.Connection,
    statements: _SqliteStatements,
    rows: _Rows,
    *,
    until_written: bool = False,
) -> int:
    """Every row, in key order; the rows inserted or updated (not the triggers'), counted up to
    the first chunk that writes one with `until_written`."""
    table, columns, per = statements.table, statements.bound, statements.rows
    cursor = connection.connection.cursor()
    written = 0
    try:
        if per == 1:  # zip's tuples: one reused per row as sqlite3 binds it
            for values in _python_chunks(rows, table, columns, sqlite=True):
                cursor.executemany(statements.sql(1), zip(*values, strict=True))  # type: ignore[arg-type]
                written += cursor.rowcount
                if until_written and written:
                    break
            return written
        for block in _sqlite_blocks(rows, table, columns):
            whole = len(block) // per * per
            for part, n in ((block[:whole], per), (block[whole:], 1)):
                if len(part):
                    cursor.executemany(
                        statements.sql(n), part.reshape(-1, n * len(columns)).tolist()
                    )
                    written += cursor.rowcount
            if until_written and written:
                break
    finally:
        cursor.close()
    return written


def _sqlite_log_names(table: sa.Table) -> tuple[str, str, str]:
    """(counting trigger, revision trigger, stamp table) of one upsert into `table`."""
    return (
        f"stocksync_count_{table.name}_updates",
        f"stocksync_keep_{table.name}_revision",
        f"stocksync_{table.name}_write_log",
    )


def _sqlite_write_log(
    connection: sa.Connection, table: sa.Table, revision: _RevisionLog | None
) -> None:
    """TEMP triggers counting the rows the upsert updates and keeping their revisions.

    They fire only for rows the upsert really updates (its WHERE skips identical rows); a
    one-row TEMP table holds the counts and the revision stamp (`revised_at`, `run_id`). The
    revision trigger keeps only rows whose value columns changed. All live on this connection
    until `_drop_sqlite_write_log`.
    """
    counter, keeper, log_name = _sqlite_log_names(table)
    log = sa.Table(
        log_name,
        sa.MetaData(),
        sa.Column("updated", sa.Integer, nullable=False),
        sa.Column("revised", sa.Integer, nullable=False),
        sa.Column("revised_at", sa.DateTime(timezone=True)),
        sa.Column("run_id", sa.String(64)),
        prefixes=["TEMPORARY"],
    )
    _drop_sqlite_write_log(connection, table)
    log.create(connection)
    stamp = (revision.revised_at, revision.run_id) if revision else (None, None)
    connection.execute(
        log.insert().values(updated=0, revised=0, revised_at=stamp[0], run_id=stamp[1])
    )
    connection.exec_driver_sql(
        f"CREATE TEMP TRIGGER {counter} AFTER UPDATE ON {table.name} BEGIN "
        f"UPDATE {log_name} SET updated = updated + 1; END"
    )
    if revision is None or not revision.columns:
        return
    changed = " OR ".join(f"old.{c} IS NOT new.{c}" for c in revision.columns)
    target = ", ".join(revision.target_columns())
    values = ", ".join(
        [
            "old.code",
            "old.trade_date",
            *[f"old.{c}" for c in revision.columns],
            *[f"new.{c}" for c in revision.columns],
            "s.revised_at",
            "s.run_id",
        ]
    )
    connection.exec_driver_sql(
        f"CREATE TEMP TRIGGER {keeper} AFTER UPDATE ON {table.name} WHEN {changed} BEGIN "
        f"INSERT INTO {revision.table.name} ({target}) SELECT {values} FROM {log_name} s; "
        f"UPDATE {log_name} SET revised = revised + 1; END"
    )


def _sqlite_write_counts(connection: sa.Connection, table: sa.Table) -> tuple[int, int]:
    """(rows updated, revisions kept) by the upsert, from its write log."""
    updated, revised = connection.exec_driver_sql(
        f"SELECT updated, revised FROM temp.{_sqlite_log_names(table)[2]}"
    ).one()
    return int(updated), int(revised)


def _drop_sqlite_write_log(connection: sa.Connection, table: sa.Table) -> None:
    counter, keeper, log = _sqlite_log_names(table)
    connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS temp.{counter}")
    connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS temp.{keeper}")
    connection.exec_driver_sql(f"DROP TABLE IF EXISTS temp.{log}")


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


Bounds = list[tuple[str, object, object]]
"""(key column, lowest, highest value in the frame) of the date key and the `code` key."""


def _key_bounds(table: sa.Table, rows: _Rows) -> Bounds:
    """The frame's range of days and of codes: every stored row a frame's key can match lies in
    both, so `_within` lets the planner read only that part of the table (a stock batch of a
    history load: its codes' rows, not every stock's)."""
    bounds: Bounds = []
    for column in table.primary_key.columns:
        if isinstance(column.type, sa.Date) or column.name == "code":
            distinct = rows.factors[column.name][1]  # sorted
            low, high = distinct[0], distinct[-1]
            if isinstance(column.type, sa.Date):
                bounds.append((column.name, _as_date(low), _as_date(high)))
            else:
                bounds.append((column.name, str(low), str(high)))
    return bounds


def _within(table: sa.Table, bounds: Bounds) -> list[sa.ColumnElement[bool]]:
    return [table.c[name].between(low, high) for name, low, high in bounds]


def _any_key_exists(connection: sa.Connection, table: sa.Table, bounds: Bounds) -> bool:
    query = sa.select(sa.literal(1)).select_from(table).where(*_within(table, bounds))
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
    blocks = _binary_blocks(rows.frame, table, columns, rows.order, rows.factors)
    with raw.cursor() as cursor:
        if blocks is not None:  # the whole COPY stream, built with numpy ...
            # ... while a psycopg thread sends the previous blocks to the server
            writer = QueuedLibpqWriter(cursor)
            with cursor.copy(f"{sql} (FORMAT BINARY)", writer=writer) as copy:
                for block in blocks:
                    copy.write(block)
            return
    with raw.cursor() as cursor, cursor.copy(f"{sql} (FORMAT BINARY)") as copy:
        copy.set_types([_pg_binary_type(table.c[c].type)[0] for c in columns])
        for values in _python_chunks(rows, table, columns):
            for row in zip(*values, strict=True):
                copy.write_row(row)


def _binary_blocks(
    frame: pd.DataFrame,
    table: sa.Table,
    columns: list[str],
    order: np.ndarray | None = None,
    factors: dict[str, tuple[np.ndarray, Any]] | None = None,
) -> Iterator[bytes] | None:
    """`frame` (rows in `order`) as PostgreSQL binary COPY data built with numpy (~5x `write_row`).

    None when a row would not have a fixed layout: a NULL, or text of varying length or not
    ASCII. Then the caller falls back to `write_row`. `factors`: columns already factorized.
    """
    arrays = []
    for name in columns:
        array = _fixed_width(frame[name], table.c[name].type, (factors or {}).get(name))
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


def _fixed_width(
    series: pd.Series,
    column_type: sa.types.TypeEngine,
    factors: tuple[np.ndarray, Any] | None = None,
) -> np.ndarray | None:
    """The column as a numpy array of its binary COPY values, or None (see `_binary_blocks`).

    Text and dates are converted once per distinct value (`factors`: the column's
    `pd.factorize`, when already computed)."""
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
        return _pg_days(series, factors)
    if isinstance(column_type, sa.String):
        codes, uniques = factors or pd.factorize(series)
        try:
            distinct = np.array(list(uniques), dtype=np.bytes_)  # raises on non-ASCII
        except (UnicodeEncodeError, TypeError, ValueError):
            return None
        lengths = np.char.str_len(distinct)
        if len(distinct) and (lengths.min() != lengths.max() or lengths.min() == 0):
            return None
        return distinct[codes]
    return None


def _pg_days(series: pd.Series, factors: tuple[np.ndarray, Any] | None = None) -> np.ndarray | None:
    """Days since 2000-01-01 (int32), or None for values that are not dates."""
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        days = series.to_numpy(dtype="datetime64[D]").astype(np.int64)
        return (days + (_UNIX_EPOCH_ORDINAL - _PG_EPOCH_ORDINAL)).astype(np.int32)
    codes, uniques = factors or pd.factorize(series)
    try:
        ordinals = np.fromiter((d.toordinal() for d in uniques), np.int64, len(uniques))
    except (AttributeError, TypeError, ValueError):
        return None
    return (ordinals - _PG_EPOCH_ORDINAL).astype(np.int32)[codes]


def _pg_binary_type(column_type: sa.types.TypeEngine) -> tuple[str, str, int]:
    """(binary COPY type, send function, width) of a column type (see `_PG_BINARY_TYPES`)."""
    for sa_type, binary in _PG_BINARY_TYPES.items():
        if isinstance(column_type, sa_type):
            return binary
    raise TypeError(f"no COPY type for {column_type!r}")


def _python_chunks(
    rows: _Rows, table: sa.Table, columns: list[str], *, sqlite: bool = False
) -> Iterator[list[list]]:
    """Column-wise Python values (None for missing; see `_driver_values` for `sqlite`) in the
    types the driver expects, in key order, `CHUNK_ROWS` (`_SQLITE_CHUNK_ROWS`) rows at a time."""
    converted = [
        _driver_values(rows.frame[c], table.c[c].type, rows.factors.get(c), sqlite=sqlite)
        for c in columns
    ]
    chunk = _SQLITE_CHUNK_ROWS if sqlite else CHUNK_ROWS
    for start in range(0, len(rows), chunk):
        positions = rows.order[start : start + chunk]
        yield [take(positions).tolist() for take in converted]


def _sqlite_blocks(rows: _Rows, table: sa.Table, columns: list[str]) -> Iterator[np.ndarray]:
    """The SQLite values of `_python_chunks` as object arrays, a row per row."""
    converted = [
        _driver_values(rows.frame[c], table.c[c].type, rows.factors.get(c), sqlite=True)
        for c in columns
    ]
    for start in range(0, len(rows), _SQLITE_CHUNK_ROWS):
        positions = rows.order[start : start + _SQLITE_CHUNK_ROWS]
        block = np.empty((len(positions), len(columns)), dtype=object)
        for j, take in enumerate(converted):
            block[:, j] = take(positions)
        yield block


def _driver_values(
    series: pd.Series,
    column_type: sa.types.TypeEngine,
    factors: tuple[np.ndarray, Any] | None = None,
    *,
    sqlite: bool = False,
) -> Callable[[np.ndarray], np.ndarray]:
    """A function giving the column's driver values at some row positions, as an array whose
    items (or `tolist()`) are the Python values: numbers through numpy, text and dates
    converted once per distinct value.

    `factors`: the column's `pd.factorize`, when already computed (the key columns). `sqlite`:
    dates as ISO text, missing floats left NaN (SQLite stores a bound NaN as NULL).
    """
    if isinstance(column_type, sa.Double | sa.Float):
        floats = series.to_numpy(dtype=np.float64, na_value=np.nan)
        return (lambda rows: floats[rows]) if sqlite else _with_nulls(floats, series)
    if isinstance(column_type, sa.Integer | sa.BigInteger) and not (
        pd.api.types.is_float_dtype(series.dtype) and series.isna().any()
    ):
        return _with_nulls(series.to_numpy(dtype=np.int64, na_value=0), series)
    if isinstance(column_type, sa.Integer | sa.BigInteger):
        convert: Callable[[Any], object] = int
    elif isinstance(column_type, sa.Date):
        convert = _iso_date if sqlite else _as_date
    elif isinstance(column_type, sa.Boolean):
        convert = bool
    else:
        convert = str
    codes, uniques = factors or pd.factorize(series, use_na_sentinel=True)
    lookup = np.empty(len(uniques) + 1, dtype=object)
    lookup[:-1] = [convert(v) for v in uniques]
    lookup[-1] = None  # code -1 = missing
    return lambda rows: lookup[codes[rows]]


def _with_nulls(array: np.ndarray, series: pd.Series) -> Callable[[np.ndarray], np.ndarray]:
    missing = series.isna().to_numpy()
    if not missing.any():
        return lambda rows: array[rows]

    def take(rows: np.ndarray) -> np.ndarray:
        values = array[rows].astype(object)
        values[missing[rows]] = None
        return values

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
