"""Run the benchmarks, print a table and write `benchmarks/results/<name>.json`.

python -m benchmarks                         # everything at full size (~15 min on 2 cores)
python -m benchmarks --size tiny             # seconds: what CI runs
python -m benchmarks --only writes,tushare   # a subset
python benchmarks/run.py --stocks 1000 --latency-ms 20
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    RESULTS,
    Outcome,
    Row,
    Target,
    machine,
    postgres_reachable,
    scratch_postgres,
)
from benchmarks.sizes import SIZES, Size, with_overrides

BENCHMARKS = ("history", "memory", "tushare", "writes", "dagster", "scaling")


def _runner(name: str, size: Size, pg_url: str | None) -> Callable[[], Outcome]:
    from benchmarks import dagster_overhead, history, memory, scaling, tushare, writes

    def with_warehouse(run: Callable[[str], Outcome]) -> Outcome:
        if pg_url is None:
            import tempfile

            with tempfile.TemporaryDirectory(prefix="stocksync_bench_") as tmp:
                return run(f"sqlite:///{Path(tmp) / 'warehouse.db'}")
        with scratch_postgres(pg_url) as url:
            return run(url)

    if name == "history":
        return lambda: with_warehouse(lambda url: history.run(size, url))
    if name == "memory":
        return lambda: with_warehouse(lambda url: memory.run(size, url))
    if name == "scaling":
        return lambda: with_warehouse(lambda url: scaling.run(size, url))
    if name == "tushare":
        return lambda: tushare.run(size)
    if name == "dagster":
        return lambda: dagster_overhead.run(size, pg_url)
    if pg_url is None:
        return lambda: writes.run(size, None)

    def run_writes() -> Outcome:
        with scratch_postgres(pg_url) as url:
            return writes.run(size, url)

    return run_writes


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "" if value is None else format(value, spec)


def table(rows: Sequence[Row], targets: Sequence[Target]) -> str:
    """A Markdown table of the rows, then one of the targets."""
    lines = [
        "| benchmark | case | wall s | calls | rows | rows/s | stocks/s | peak RSS MB | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        seconds = f"{r.seconds:,.1f}" + (" (extrapolated)" if r.extrapolated else "")
        lines.append(
            f"| {r.bench} | {r.case} | {seconds} | {_fmt(r.calls)} | {_fmt(r.rows)} | "
            f"{_fmt(r.rows_per_s)} | {_fmt(r.stocks_per_s, ',.1f')} | {_fmt(r.rss_mb)} | "
            f"{r.note} |"
        )
    if targets:
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {t.goal} | {t.measured} | {'yes' if t.met else 'NO'} |" for t in targets]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="stocksync-dagster benchmarks (issue 7)")
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset")
    parser.add_argument("--name", default=None, help="results file name (default: the size)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--stocks", type=int, default=None)
    parser.add_argument("--latency-ms", type=float, default=None)
    parser.add_argument("--partitions", type=int, default=None, help="dagster benchmark")
    parser.add_argument(
        "--pg-url",
        default=None,
        help="admin URL of a PostgreSQL server for scratch databases (default: "
        "$STOCKSYNC_BENCH_PG, $STOCKSYNC_TEST_PG or postgres@127.0.0.1:5432/test); "
        "'none' = SQLite only",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show progress logs")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    size = with_overrides(
        SIZES[args.size],
        stocks=args.stocks,
        latency_ms=args.latency_ms,
        dagster_partitions=args.partitions,
    )
    only = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = set(only) - set(BENCHMARKS)
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; choose from {BENCHMARKS}")
    from benchmarks.common import PG_ADMIN_URL

    pg_url = None if (args.pg_url or "").lower() == "none" else (args.pg_url or PG_ADMIN_URL)
    if pg_url is not None and (why := postgres_reachable(pg_url)):
        print(f"PostgreSQL unreachable ({why}): warehouse benchmarks use SQLite", file=sys.stderr)
        pg_url = None
    report: dict = {
        "size": size.name,
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "warehouse": "postgresql" if pg_url else "sqlite",
        "benchmarks": {},
    }
    rows: list[Row] = []
    targets: list[Target] = []
    for name in only:
        print(f"== {name} ({size.name}) ...", file=sys.stderr, flush=True)
        began = time.perf_counter()
        with nullcontext():
            outcome = _runner(name, size, pg_url)()
        rows += outcome.rows
        targets += outcome.targets
        report["benchmarks"][name] = {
            "params": outcome.params,
            "seconds": round(time.perf_counter() - began, 2),
            "rows": [r.as_dict() for r in outcome.rows],
            "targets": [t.__dict__ for t in outcome.targets],
        }
    text = table(rows, targets)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.name or size.name}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nwrote {path}", file=sys.stderr)
    report["table"] = text
    return report


if __name__ == "__main__":
    main()
