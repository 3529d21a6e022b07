"""Idempotent bulk upserts of normalised frames, inside the caller's transaction.

PostgreSQL: binary COPY into a TEMP staging table, then one `INSERT ... ON CONFLICT DO UPDATE`
that only touches rows whose values changed. When none of the frame's keys exist yet (a history
load), the rows are COPYed straight into the table: the same result at raw COPY speed.
SQLite: the same statements, with the staging table filled by `executemany`.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

_PG_BINARY_TYPES = {
    sa.String: "text",
    sa.Date: "date",
    sa.Double: "float8",
    sa.Float: "float8",
    sa.BigInteger: "int8",
    sa.Integer: "int4",
    sa.Boolean: "bool",
}


@dataclass(frozen=True)
class UpsertStats:
    """What a write did: rows new, rows whose values changed, rows already identical."""

    inserted: int
    updated: int
    unchanged: int

    @property
    def written(self) -> int:
        return self.inserted + self.updated


def upsert_frame(connection: sa.Connection, table: sa.Table, frame: pd.DataFrame) -> UpsertStats:
    """Insert or update `frame`'s rows by primary key; rows with identical values are left alone."""
    if frame.empty:
        return UpsertStats(0, 0, 0)
    keys = [c.name for c in table.primary_key.columns]
    columns = [c.name for c in table.columns if c.name in frame.columns]
    if frame.duplicated(subset=keys).any():
        raise ValueError(f"{table.name}: the frame has duplicate {', '.join(keys)} rows")
    values = _python_columns(frame, table, columns)
    dialect = connection.dialect.name
    if dialect == "postgresql":
        _lock_table_writes(connection, table)
        if not _any_key_exists(connection, table, frame):
            _pg_copy(connection, table.name, table, columns, values)
            return UpsertStats(len(frame), 0, 0)
    stage = _staging_table(table, columns)
    stage.create(connection)
    try:
        if dialect == "postgresql":
            _pg_copy(connection, stage.name, table, columns, values)
        else:
            placeholders = ", ".join("?" for _ in columns)
            connection.exec_driver_sql(
                f"INSERT INTO {stage.name} ({', '.join(columns)}) VALUES ({placeholders})",
                list(zip(*values, strict=True)),
            )
        join = " AND ".join(f"s.{k} = t.{k}" for k in keys)
        existing = connection.exec_driver_sql(
            f"SELECT count(*) FROM {stage.name} s JOIN {table.name} t ON {join}"
        ).scalar_one()
        merge = _merge_statement(dialect, table, stage, columns, keys)
        written = connection.execute(merge.execution_options(preserve_rowcount=True)).rowcount
    finally:
        if dialect != "postgresql":
            stage.drop(connection)
    inserted = len(frame) - existing
    updated = written - inserted
    return UpsertStats(inserted, updated, existing - updated)


def _merge_statement(
    dialect: str, table: sa.Table, stage: sa.Table, columns: list[str], keys: list[str]
) -> sa.Insert:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    # `WHERE true` keeps SQLite's parser from reading ON CONFLICT as a join constraint.
    stmt = insert(table).from_select(
        columns, sa.select(*[stage.c[c] for c in columns]).where(sa.true())
    )
    changing = [c for c in columns if c not in keys]
    return stmt.on_conflict_do_update(
        index_elements=keys,
        set_={c: stmt.excluded[c] for c in changing},
        where=sa.or_(*[table.c[c].is_distinct_from(stmt.excluded[c]) for c in changing]),
    )


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


def _any_key_exists(connection: sa.Connection, table: sa.Table, frame: pd.DataFrame) -> bool:
    keys = [c.name for c in table.primary_key.columns]
    date_key = next((k for k in keys if isinstance(table.c[k].type, sa.Date)), None)
    query = sa.select(sa.literal(1)).select_from(table)
    if date_key is not None:
        query = query.where(table.c[date_key].between(frame[date_key].min(), frame[date_key].max()))
    return connection.execute(query.limit(1)).first() is not None


def _pg_copy(
    connection: sa.Connection, target: str, table: sa.Table, columns: list[str], values: list[list]
) -> None:
    raw = connection.connection.driver_connection
    sql = f"COPY {target} ({', '.join(columns)}) FROM STDIN"
    if raw.__class__.__module__.startswith("psycopg2"):
        buffer = io.StringIO()
        pd.DataFrame(dict(zip(columns, values, strict=True))).to_csv(
            buffer, index=False, header=False
        )
        buffer.seek(0)
        with raw.cursor() as cursor:
            cursor.copy_expert(f"{sql} WITH (FORMAT csv)", buffer)
        return
    types = [_pg_binary_type(table.c[c].type) for c in columns]
    with raw.cursor() as cursor, cursor.copy(f"{sql} (FORMAT BINARY)") as copy:
        copy.set_types(types)
        for row in zip(*values, strict=True):
            copy.write_row(row)


def _pg_binary_type(column_type: sa.types.TypeEngine) -> str:
    for sa_type, pg_type in _PG_BINARY_TYPES.items():
        if isinstance(column_type, sa_type):
            return pg_type
    raise TypeError(f"no COPY type for {column_type!r}")


def _python_columns(frame: pd.DataFrame, table: sa.Table, columns: list[str]) -> list[list]:
    """Column-wise Python values (None for missing) in the types the driver expects."""
    out = []
    for name in columns:
        series = frame[name]
        column_type = table.c[name].type
        if isinstance(column_type, sa.Date):
            values = [_as_date(v) for v in series.tolist()]
        elif isinstance(column_type, sa.Integer | sa.BigInteger):
            values = [None if pd.isna(v) else int(v) for v in series.tolist()]
        elif isinstance(column_type, sa.Double | sa.Float):
            array = series.to_numpy(dtype=np.float64, na_value=np.nan)
            values = [None if v != v else v for v in array.tolist()]
        elif isinstance(column_type, sa.Boolean):
            values = [None if v is None or v is pd.NA else bool(v) for v in series.tolist()]
        else:
            values = [
                None if v is None or v is pd.NA or v != v else str(v) for v in series.tolist()
            ]
        out.append(values)
    return out


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
