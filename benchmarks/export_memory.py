"""Peak memory of `stocksync export` on a small and a large warehouse: it should not grow with
the rows exported (the rows stream in chunks), unlike reading the table into pandas.

python -m benchmarks.export_memory                 # 100 vs 5,000 stocks x 1 year (SQLite)
python -m benchmarks.export_memory --size tiny     # seconds
python -m benchmarks.export_memory --pg-url postgresql+psycopg://user@host/db   # a scratch DB

Each export runs in a fresh process that reports its own peak RSS (`VmHWM` of
/proc/self/status: unlike `ru_maxrss` it starts again at exec, so the parent that built the
warehouse does not count). Prints a Markdown table and writes
`benchmarks/results/export_memory.json`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/export_memory.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

from stocksync_dagster.core.export import DEFAULT_CHUNK_ROWS

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = {  # name -> (stocks of each warehouse, trading days)
    "tiny": ((20, 400), 40),
    "full": ((100, 1000, 5000), 243),
}
LABELS = ("small", "medium", "large")
SMALL_CHUNK = 10_000
FIRST_DAY = dt.date(2025, 1, 2)


@dataclass
class Measurement:
    case: str
    stocks: int
    rows: int
    files: int
    seconds: float
    peak_rss_mb: float


def build_warehouse(url: str, stocks: int, days: int) -> int:
    """A synthetic `daily_bar` + `adj_factor` of `stocks` x `days` (random walk prices)."""
    from stocksync_dagster.core import trading_calendar
    from stocksync_dagster.core.warehouse import Warehouse, schema
    from stocksync_dagster.core.warehouse.upsert import upsert_frame

    trading = trading_calendar.trading_days(FIRST_DAY, FIRST_DAY + dt.timedelta(days=days * 2))
    trading = trading[:days]
    codes = np.array([f"{600000 + i:06d}.SH" for i in range(stocks)], dtype=object)
    rng = np.random.default_rng(1)
    close = np.round(np.exp(rng.normal(2.5, 0.6, stocks)), 2)
    factor = np.ones(stocks)
    warehouse = Warehouse(url)
    rows = 0
    for block in range(0, days, 20):
        bars, factors = [], []
        for day in trading[block : block + 20]:
            pre = close
            close = np.maximum(np.round(pre * (1 + rng.normal(0, 0.02, stocks)), 2), 0.01)
            factor = np.where(rng.random(stocks) < 0.004, factor * 1.05, factor)
            high, low = np.maximum(pre, close) * 1.01, np.minimum(pre, close) * 0.99
            volume = rng.integers(1_000, 1_000_000, stocks) * 100
            bars.append(
                pd.DataFrame(
                    {
                        "code": codes,
                        "trade_date": [day] * stocks,
                        "open": pre,
                        "high": np.round(high, 2),
                        "low": np.round(low, 2),
                        "close": close,
                        "pre_close": pre,
                        "volume": volume,
                        "amount": np.round(volume * close, 2),
                        "pct_chg": np.round((close / pre - 1) * 100, 4),
                    }
                )
            )
            factors.append(
                pd.DataFrame({"code": codes, "trade_date": [day] * stocks, "adj_factor": factor})
            )
        with warehouse.begin() as connection:
            rows += upsert_frame(connection, schema.daily_bar, pd.concat(bars)).written
            upsert_frame(connection, schema.adj_factor, pd.concat(factors))
    warehouse.dispose()
    return rows


def child(url: str, out: str, adjust: str, fmt: str, mode: str, chunk_rows: int) -> None:
    """One export (or, mode `pandas`, one whole-table read) in this process; prints JSON."""
    from stocksync_dagster.core.export import ExportRequest, export_bars
    from stocksync_dagster.core.warehouse import Warehouse

    started = time.perf_counter()
    warehouse = Warehouse(url)
    with warehouse.read_only() as connection:
        if mode == "pandas":
            frame = pd.read_sql_table("daily_bar", connection)
            rows, files = len(frame), 0
        else:
            last = FIRST_DAY + dt.timedelta(days=800)
            request = ExportRequest(
                FIRST_DAY, last, Path(out), fmt=fmt, adjust=adjust, chunk_rows=chunk_rows
            )
            report = export_bars(connection, request)
            rows, files = report.rows, len(report.files)
    peak_kb = _peak_rss_kb()
    print(
        json.dumps(
            {
                "rows": rows,
                "files": files,
                "seconds": time.perf_counter() - started,
                "peak_rss_mb": peak_kb / 1024,
            }
        )
    )


def _peak_rss_kb() -> float:
    """This process's peak resident set since exec, in KiB."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # elsewhere: best effort


def measure(
    case: str,
    stocks: int,
    url: str,
    out: Path,
    adjust: str,
    fmt: str,
    mode: str,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Measurement:
    command = [sys.executable, "-m", "benchmarks.export_memory", "--child", url, str(out)]
    command += ["--adjust", adjust, "--format", fmt, "--mode", mode]
    command += ["--chunk-rows", str(chunk_rows)]
    done = subprocess.run(
        command, capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1]
    )
    values = json.loads(done.stdout.strip().splitlines()[-1])
    return Measurement(
        case,
        stocks,
        values["rows"],
        values["files"],
        round(values["seconds"], 2),
        round(values["peak_rss_mb"], 1),
    )


def _warehouse(pg_url: str | None, path: Path) -> AbstractContextManager[str]:
    if pg_url is None:
        return nullcontext(f"sqlite:///{path}")
    from benchmarks.common import scratch_postgres

    return scratch_postgres(pg_url)


CASES = (  # adjust, format, mode
    ("none", "parquet", "export"),
    ("qfq", "parquet", "export"),
    ("none", "csv", "export"),
    ("none", "-", "pandas"),
)


def run(size: str = "full", pg_url: str | None = None) -> list[Measurement]:
    """Every case on each warehouse, then the largest again with small chunks."""
    sizes, days = SIZES[size]
    found: list[Measurement] = []
    with (
        tempfile.TemporaryDirectory(prefix="stocksync_export_bench_") as scratch,
        ExitStack() as stack,
    ):
        tmp = Path(scratch)
        warehouses = []
        for label, stocks in zip(LABELS, sizes, strict=False):
            url = stack.enter_context(_warehouse(pg_url, tmp / f"{label}.db"))
            build_warehouse(url, stocks, days)
            warehouses.append((label, url, stocks))
        for label, url, stocks in warehouses:
            for adjust, fmt, mode in CASES:
                case = (
                    f"{label}: export {adjust} {fmt}"
                    if mode == "export"
                    else f"{label}: pandas.read_sql_table (whole table, for contrast)"
                )
                out = tmp / f"{label}-{adjust}-{fmt}"
                found.append(measure(case, stocks, url, out, adjust, fmt, mode))
        label, url, stocks = warehouses[-1]
        case = f"{label}: export none parquet, chunks of {SMALL_CHUNK:,}"
        out = tmp / f"{label}-small-chunks"
        found.append(measure(case, stocks, url, out, "none", "parquet", "export", SMALL_CHUNK))
    return found


def table(found: list[Measurement]) -> str:
    lines = [
        "| case | stocks | rows | files | wall s | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {m.case} | {m.stocks:,} | {m.rows:,} | {m.files} | {m.seconds:,.1f} | "
        f"{m.peak_rss_mb:,.1f} |"
        for m in found
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Measurement] | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--pg-url", help="PostgreSQL server URL (a scratch database is used)")
    parser.add_argument("--child", nargs=2, metavar=("URL", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--adjust", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--format", dest="fmt", default="parquet", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="export", help=argparse.SUPPRESS)
    parser.add_argument(
        "--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child, args.adjust, args.fmt, args.mode, args.chunk_rows)
        return None
    found = run(args.size, args.pg_url)
    print(table(found))
    RESULTS.mkdir(exist_ok=True)
    target = RESULTS / f"export_memory_{args.size}.json"
    target.write_text(json.dumps([asdict(m) for m in found], indent=2) + "\n")
    return found


if __name__ == "__main__":
    main()
