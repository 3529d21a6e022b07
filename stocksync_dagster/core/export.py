"""Export daily bars for research: one parquet or CSV file per year or month, streamed.

Rows are read with a streaming cursor (`stream_results`, server-side on PostgreSQL) in chunks
of `chunk_rows` and written chunk by chunk (a parquet row group per chunk), so memory stays
bounded whatever the range. Columns and units are the warehouse's (prices in CNY, `volume` in
shares, `amount` in CNY, `pct_chg` in percent); the parquet schema carries them as metadata and
`manifest.json` in the output directory describes every export.

Adjustments (`adjust`):
- `none`: `daily_bar` as stored.
- `hfq`: price x adj_factor (the `daily_bar_hfq` view).
- `qfq`: price x adj_factor / the reference factor: the stock's latest factor (the
  `daily_bar_qfq` view), or with `as_of` D the stock's factor on D (the latest on or before D),
  i.e. the prices as a researcher would have seen them on D. Only days <= D are exported then.
  On PostgreSQL the same is the function `daily_bar_qfq_as_of(D)`.
Adjusted rows need a factor: a bar without one is not exported (like the views).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from stocksync_dagster.core.codes import is_valid_code
from stocksync_dagster.core.errors import ConfigError
from stocksync_dagster.core.warehouse.schema import adj_factor, daily_bar

if TYPE_CHECKING:
    import pyarrow as pa

ADJUSTMENTS = ("none", "qfq", "hfq")
FORMATS = ("parquet", "csv")
SPLITS = ("year", "month")
DEFAULT_CHUNK_ROWS = 100_000
PRICE_COLUMNS = ("open", "high", "low", "close", "pre_close")
UNITS = {
    "code": "600000.SH / 000001.SZ / 430047.BJ",
    "trade_date": "date (Asia/Shanghai trading day)",
    **{c: "CNY" for c in PRICE_COLUMNS},
    "volume": "shares",
    "amount": "CNY",
    "pct_chg": "percent (1.5 = +1.5%)",
    "adj_factor": "cumulative factor (hfq price = raw x adj_factor)",
    "source": "the source that served the row (baostock, tushare, demo; empty before 0003)",
}
PARQUET_EXTRA = "pip install 'stocksync-dagster[export]'"


@dataclass(frozen=True)
class ExportRequest:
    """What to export, validated by `check`."""

    start: dt.date
    end: dt.date
    out: Path
    fmt: str = "parquet"
    adjust: str = "none"
    as_of: dt.date | None = None
    codes: tuple[str, ...] | None = None
    split: str = "year"
    chunk_rows: int = DEFAULT_CHUNK_ROWS

    def check(self) -> None:
        """Raise ConfigError naming the first bad option."""
        if self.start > self.end:
            raise ConfigError("--start", f"{self.start} is after --end {self.end}")
        for option, value, allowed in (
            ("--format", self.fmt, FORMATS),
            ("--adjust", self.adjust, ADJUSTMENTS),
            ("--split", self.split, SPLITS),
        ):
            if value not in allowed:
                raise ConfigError(option, f"{value!r} is not one of {', '.join(allowed)}")
        if self.as_of is not None and self.as_of < self.start:
            raise ConfigError("--as-of", f"{self.as_of} is before --start {self.start}")
        if self.codes is not None:
            bad = [c for c in self.codes if not is_valid_code(c)]
            if bad or not self.codes:
                raise ConfigError(
                    "--codes", f"not in 600000.SH form: {', '.join(bad) or '(empty list)'}"
                )
        if self.chunk_rows < 1:
            raise ConfigError("chunk_rows", f"{self.chunk_rows} is not a positive number")
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError("--out", f"{self.out} exists and is not a directory")

    @property
    def last_day(self) -> dt.date:
        """`end`, or `as_of` when earlier: nothing after the as-of day is exported."""
        return min(self.end, self.as_of) if self.as_of else self.end

    @property
    def columns(self) -> list[str]:
        base = [c.name for c in daily_bar.columns]
        return base if self.adjust == "none" else [*base, "adj_factor"]

    def file_name(self, period: str) -> str:
        return f"daily_bar_{self.adjust}_{period}.{self.fmt}"


@dataclass
class ExportedFile:
    """One file written: its period, rows and how many chunks (parquet row groups) it took."""

    path: Path
    period: str
    rows: int = 0
    chunks: int = 0


@dataclass
class ExportReport:
    request: ExportRequest
    files: list[ExportedFile] = field(default_factory=list)
    codes_seen: set[str] = field(default_factory=set)
    """The requested `codes` that had rows (only tracked when codes were given)."""

    @property
    def codes_without_rows(self) -> list[str]:
        return [c for c in self.request.codes or () if c not in self.codes_seen]

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)


def parse_codes(text: str | None) -> tuple[str, ...] | None:
    """`600000.SH,000001.SZ` -> a tuple (de-duplicated, in order); None when not given."""
    if text is None:
        return None
    codes = [c.strip() for c in text.split(",") if c.strip()]
    return tuple(dict.fromkeys(codes))


def periods(start: dt.date, end: dt.date, split: str) -> list[tuple[str, dt.date, dt.date]]:
    """(label, first day, last day) of each year (`2025`) or month (`2025-08`) in [start, end]."""
    found = []
    cursor = start
    while cursor <= end:
        if split == "year":
            label, last = f"{cursor.year}", dt.date(cursor.year, 12, 31)
        else:
            following = dt.date(cursor.year + cursor.month // 12, cursor.month % 12 + 1, 1)
            label, last = f"{cursor:%Y-%m}", following - dt.timedelta(days=1)
        found.append((label, cursor, min(last, end)))
        cursor = last + dt.timedelta(days=1)
    return found


def export_query(request: ExportRequest, first: dt.date, last: dt.date) -> sa.Select:
    """The rows of [first, last] in the request's adjustment, by trade_date then code."""
    b = daily_bar.alias("b")
    where = [b.c.trade_date.between(first, last)]
    if request.codes is not None:
        where.append(b.c.code.in_(list(request.codes)))
    if request.adjust == "none":
        return sa.select(*b.c).where(*where).order_by(b.c.trade_date, b.c.code)
    a = adj_factor.alias("a")
    joined = b.join(a, sa.and_(a.c.code == b.c.code, a.c.trade_date == b.c.trade_date))
    factor: sa.ColumnElement = a.c.adj_factor
    if request.adjust == "qfq":
        reference = _reference_factor(request)
        joined = joined.join(reference, reference.c.code == b.c.code)
        factor = a.c.adj_factor / reference.c.adj_factor
    prices = {c: (b.c[c] * factor).label(c) for c in PRICE_COLUMNS}
    selected = [prices.get(c.name, c) for c in b.c]
    return (
        sa.select(*selected, a.c.adj_factor)
        .select_from(joined)
        .where(*where)
        .order_by(b.c.trade_date, b.c.code)
    )


def _reference_factor(request: ExportRequest) -> sa.Subquery:
    """Per stock, the factor qfq divides by: on `as_of` (latest on or before it), else latest."""
    m = adj_factor.alias("m")
    day = sa.select(m.c.code, sa.func.max(m.c.trade_date).label("day")).group_by(m.c.code)
    if request.as_of is not None:
        day = day.where(m.c.trade_date <= request.as_of)
    if request.codes is not None:
        day = day.where(m.c.code.in_(list(request.codes)))
    latest = day.subquery("reference_day")
    r = adj_factor.alias("r")
    return (
        sa.select(r.c.code, r.c.adj_factor)
        .select_from(
            r.join(latest, sa.and_(r.c.code == latest.c.code, r.c.trade_date == latest.c.day))
        )
        .subquery("reference")
    )


def stream_rows(
    connection: sa.Connection, query: sa.Select, chunk_rows: int
) -> Iterator[Sequence[sa.Row[Any]]]:
    """The query's rows, `chunk_rows` at a time, from a streaming (server-side) cursor."""
    result = connection.execution_options(stream_results=True, yield_per=chunk_rows).execute(query)
    try:
        yield from result.partitions(chunk_rows)
    finally:
        result.close()


def export_bars(connection: sa.Connection, request: ExportRequest) -> ExportReport:
    """Write one file per period with rows; returns what was written. Reads only."""
    request.check()
    if request.fmt == "parquet":
        _require_pyarrow()
    request.out.mkdir(parents=True, exist_ok=True)
    report = ExportReport(request)
    for label, first, last in periods(request.start, request.last_day, request.split):
        path = request.out / request.file_name(label)
        exported = ExportedFile(path, label)
        chunks = stream_rows(connection, export_query(request, first, last), request.chunk_rows)
        writer = (
            _ParquetFile(path, request) if request.fmt == "parquet" else _CsvFile(path, request)
        )
        try:
            for chunk in chunks:
                writer.write(chunk)
                exported.rows += len(chunk)
                exported.chunks += 1
                if request.codes is not None:
                    report.codes_seen.update(row[0] for row in chunk)
        except BaseException:
            writer.abandon()
            raise
        if exported.rows:
            writer.finish()
            report.files.append(exported)
        else:
            writer.abandon()
    _write_manifest(report)
    return report


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--format", f"parquet needs pyarrow, which is not installed: {PARQUET_EXTRA}"
        ) from None


class _File:
    """A file written under a temporary name and renamed when complete (never half a file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")

    def finish(self) -> None:
        self.close()
        os.replace(self.partial, self.path)

    def abandon(self) -> None:
        self.close()
        self.partial.unlink(missing_ok=True)

    def close(self) -> None:
        raise NotImplementedError


class _CsvFile(_File):
    def __init__(self, path: Path, request: ExportRequest) -> None:
        super().__init__(path)
        self.handle = self.partial.open("w", newline="", encoding="utf-8")
        self.writer = csv.writer(self.handle)
        self.writer.writerow(request.columns)

    def write(self, rows: Sequence[sa.Row[Any]]) -> None:
        self.writer.writerows(
            [v.isoformat() if isinstance(v, dt.date) else v for v in row] for row in rows
        )

    def close(self) -> None:
        if not self.handle.closed:
            self.handle.close()


class _ParquetFile(_File):
    def __init__(self, path: Path, request: ExportRequest) -> None:
        import pyarrow.parquet as pq

        super().__init__(path)
        self.schema = parquet_schema(request)
        self.writer: Any = pq.ParquetWriter(self.partial, self.schema)
        self.closed = False

    def write(self, rows: Sequence[sa.Row[Any]]) -> None:
        import pyarrow as pa

        columns = list(zip(*rows, strict=True))
        arrays = [
            pa.array(values, type=f.type) for f, values in zip(self.schema, columns, strict=True)
        ]
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))

    def close(self) -> None:
        if not self.closed:
            self.writer.close()
            self.closed = True


def parquet_schema(request: ExportRequest) -> pa.Schema:
    """Columns as in the warehouse, each with its unit; the export's parameters as metadata."""
    import pyarrow as pa

    types = {
        "code": pa.string(),
        "trade_date": pa.date32(),
        "volume": pa.int64(),
        "source": pa.string(),
    }
    fields = [
        pa.field(
            name,
            types.get(name, pa.float64()),
            nullable=name not in ("code", "trade_date"),
            metadata={"unit": UNITS[name]},
        )
        for name in request.columns
    ]
    return pa.schema(fields, metadata={"stocksync": json.dumps(_description(request))})


def _description(request: ExportRequest) -> dict[str, object]:
    return {
        "table": "daily_bar",
        "adjust": request.adjust,
        "as_of": request.as_of.isoformat() if request.as_of else None,
        "reference_factor": (
            None
            if request.adjust != "qfq"
            else f"factor on {request.as_of}"
            if request.as_of
            else "latest factor"
        ),
        "start": request.start.isoformat(),
        "end": request.last_day.isoformat(),
        "codes": list(request.codes) if request.codes is not None else None,
        "units": {name: UNITS[name] for name in request.columns},
    }


def _write_manifest(report: ExportReport) -> None:
    request = report.request
    manifest = {
        **_description(request),
        "format": request.fmt,
        "split": request.split,
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "files": [{"file": f.path.name, "period": f.period, "rows": f.rows} for f in report.files],
    }
    target = request.out / "manifest.json"
    partial = target.with_name(target.name + ".partial")
    partial.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial, target)
