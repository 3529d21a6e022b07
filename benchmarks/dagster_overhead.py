"""4. Dagster overhead: what a run costs besides fetching and writing, per partition.

(a) N one-partition runs of `daily_bars` vs one N-partition range run (demo source, 50
stocks, SQLite instance as shipped). (b) One range run of `daily_bars` + `adj_factor` with
their checks (what a backfill run is) at each size of `dagster_overhead_partitions`, on each
instance storage: `sqlite` (dagster.yaml as shipped: Dagster's SQLite storage, for
development), `postgres` (dagster-postgres, defaults) and `postgres-tuned` (the documented
production setting: `DAGSTER_EVENT_BATCH_SIZE`, `synchronous_commit=off`,
`default_toast_compression=lz4` and the event log of
stocksync_dagster/instance_storage.py). Target: <= 10 ms per partition on the production
setting.
The figure is (wall - fetch - write) / partitions, where fetch and write are the sync's own timings
(`run_fetch_seconds` + `run_write_seconds` of both assets). Every case runs in a fresh process
with partitions from 2021 (enough keys for 1,000), on a fresh instance and warehouse.

    python -m benchmarks.dagster_overhead --partitions 250 1000 --storage sqlite postgres-tuned
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import PG_ADMIN_URL, ROOT, Outcome, Row, Target, scratch_postgres
from benchmarks.sizes import Size

DEMO_STOCKS = 50
HISTORY_START = "2021-01-04"  # ~1,200 trading days to now: room for the 1,000-partition case
STORAGES = ("sqlite", "postgres", "postgres-tuned")
SQLITE_STORAGES = ("sqlite",)
TARGET_STORAGES = ("postgres-tuned",)
"""The production setting (deploy/dagster.postgres.yaml); the others are measured for
reference."""
TARGET_MS_PER_PARTITION = 10.0
MIN_PARTITIONS_FOR_TARGET = 100
"""Below this a run's fixed costs (start, checks) dominate the per-partition figure."""
EVENT_BATCH_SIZE = "1000"
POOLED_MODULE = "stocksync_dagster.instance_storage"


def _materialize_one_asset(defs, instance, first: str, last: str):  # type: ignore[no-untyped-def]
    import dagster as dg

    from stocksync_dagster.defs.market.jobs import range_tags

    result = dg.materialize(
        [a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition)],
        selection=["daily_bars"],
        instance=instance,
        resources=defs.resources,
        tags=range_tags(first, last),
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        raise_on_error=False,
    )
    if not result.success:
        raise RuntimeError(f"daily_bars {first}..{last} failed")
    return result


def one_vs_range(size: Size) -> list[Row]:
    """(a): N one-partition runs against one N-partition range run of daily_bars."""
    from benchmarks.dagster_defs import build_defs, materialization_metadata, temp_instance
    from stocksync_dagster.resources import DemoSourceResource

    n = size.dagster_partitions
    with tempfile.TemporaryDirectory(prefix="stocksync_bench_") as tmp:
        url = f"sqlite:///{Path(tmp) / 'warehouse.db'}"
        defs = build_defs(DemoSourceResource(stocks=DEMO_STOCKS), url)
        keys = defs.resolve_assets_def("daily_bars").partitions_def.get_partition_keys()  # type: ignore[union-attr]
        keys = [k for k in keys if k >= size.start.isoformat()][:n]
        with temp_instance() as instance:
            began = time.perf_counter()
            rows = 0
            for key in keys:
                result = _materialize_one_asset(defs, instance, key, key)
                rows += int(materialization_metadata(result, "daily_bars")["run_rows_fetched"])
            single = time.perf_counter() - began
        with temp_instance() as instance:
            began = time.perf_counter()
            result = _materialize_one_asset(defs, instance, keys[0], keys[-1])
            ranged = time.perf_counter() - began
            range_rows = int(materialization_metadata(result, "daily_bars")["run_rows_fetched"])
    return [
        Row(
            "dagster",
            f"{len(keys)} one-partition runs",
            single,
            rows=rows,
            note=f"{single / len(keys):.3f} s per run",
        ),
        Row(
            "dagster",
            f"one {len(keys)}-partition range run",
            ranged,
            rows=range_rows,
            note=f"{single / ranged:.0f}x faster than one run per partition",
        ),
    ]


def _instance_yaml(storage: str, pg_url: str | None) -> str:
    config = (ROOT / "dagster.yaml").read_text()
    if storage == "sqlite":
        return config
    assert pg_url is not None
    url = pg_url.replace("postgresql+psycopg://", "postgresql+psycopg2://", 1)
    if storage == "postgres":
        return config + f"\nstorage:\n  postgres:\n    postgres_url: {url}\n"
    # postgres-tuned: what deploy/dagster.postgres.yaml sets, with a URL instead of env vars
    url += "?options=-csynchronous_commit%3Doff%20-cdefault_toast_compression%3Dlz4"
    blocks = (
        ("run_storage", "dagster_postgres.run_storage", "PostgresRunStorage"),
        ("event_log_storage", POOLED_MODULE, "PooledPostgresEventLogStorage"),
        ("schedule_storage", "dagster_postgres.schedule_storage", "PostgresScheduleStorage"),
    )
    return config + "".join(
        f'\n{key}:\n  module: {module}\n  class: {name}\n  config: {{postgres_url: "{url}"}}\n'
        for key, module, name in blocks
    )


def _long_demo() -> Any:
    """The demo source with its market from HISTORY_START (the default starts in 2023)."""
    from stocksync_dagster.core.sources.demo import DemoSource, shared_market
    from stocksync_dagster.resources import DemoSourceResource

    class LongDemoSource(DemoSource):
        def __init__(self, n_stocks: int, seed: int) -> None:
            super().__init__(n_stocks, seed)
            self.market = shared_market(n_stocks, seed, dt.date.fromisoformat(HISTORY_START))

    class LongDemoSourceResource(DemoSourceResource):
        def make_source(self) -> DemoSource:
            return LongDemoSource(self.stocks, self.seed)

    return LongDemoSourceResource(stocks=DEMO_STOCKS)


def measure_case(partitions: int, home: str) -> dict[str, float]:
    """In this process (fresh, env set by `range_case`): one range run of both assets + checks."""
    import dagster as dg

    from benchmarks.dagster_defs import build_defs, materialization_metadata
    from stocksync_dagster.cli.runs import materialize_range, materialize_unpartitioned

    url = f"sqlite:///{Path(home) / 'warehouse.db'}"
    defs = build_defs(_long_demo(), url)
    keys = defs.resolve_assets_def("daily_bars").partitions_def.get_partition_keys()  # type: ignore[union-attr]
    keys = keys[-partitions:]
    with dg.DagsterInstance.from_config(home) as instance:
        if not materialize_unpartitioned(defs, instance, log_level="WARNING").success:
            raise RuntimeError("reference assets failed")
        began = time.perf_counter()
        result = materialize_range(
            defs,
            instance,
            dt.date.fromisoformat(keys[0]),
            dt.date.fromisoformat(keys[-1]),
            log_level="WARNING",
        )
        wall = time.perf_counter() - began
        if not result.success:
            raise RuntimeError(f"range run {keys[0]}..{keys[-1]} failed")
        work = 0.0
        for asset in ("daily_bars", "adj_factor"):
            meta = materialization_metadata(result, asset)
            work += float(meta["run_fetch_seconds"]) + float(meta["run_write_seconds"])
    return {"partitions": len(keys), "wall": wall, "work": work}


def range_case(partitions: int, storage: str, pg_url: str | None) -> Row:
    """(b) for one size and storage, in a fresh process on a fresh instance."""
    home = tempfile.mkdtemp(prefix="stocksync_bench_home_")
    env = {
        **os.environ,
        "STOCKSYNC_START_DATE": HISTORY_START,
        "STOCKSYNC_SOURCE": "demo",
        "DAGSTER_HOME": home,
    }
    env.pop("DAGSTER_EVENT_BATCH_SIZE", None)
    if storage == "postgres-tuned":
        env["DAGSTER_EVENT_BATCH_SIZE"] = EVENT_BATCH_SIZE
    try:
        database = scratch_postgres(pg_url) if pg_url and storage not in SQLITE_STORAGES else None
        with database or contextlib.nullcontext() as db_url:
            Path(home, "dagster.yaml").write_text(_instance_yaml(storage, db_url))
            code = (
                "import json, sys; from benchmarks.dagster_overhead import measure_case; "
                f"print('RESULT', json.dumps(measure_case({partitions}, {home!r})))"
            )
            done = subprocess.run(
                [sys.executable, "-c", code],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"{storage} {partitions}: {done.stderr[-2000:]}")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    figures = json.loads(line.removeprefix("RESULT "))
    other = figures["wall"] - figures["work"]
    per = other / figures["partitions"] * 1000
    return Row(
        "dagster",
        f"range run overhead, {figures['partitions']} partitions, {storage} instance",
        figures["wall"],
        note=f"{per:.1f} ms per partition outside fetch + write ({other:.1f} s of "
        f"{figures['wall']:.1f} s)",
        extra={"overhead_ms_per_partition": round(per, 1), "fetch_write_s": figures["work"]},
    )


def run(size: Size, pg_url: str | None = None) -> Outcome:
    out = Outcome(params={"partitions": size.dagster_partitions, "demo_stocks": DEMO_STOCKS})
    out.rows += one_vs_range(size)
    storages = STORAGES if pg_url else SQLITE_STORAGES
    for partitions in size.dagster_overhead_partitions:
        for storage in storages:
            row = range_case(partitions, storage, pg_url)
            out.rows.append(row)
            if storage in TARGET_STORAGES and partitions >= MIN_PARTITIONS_FOR_TARGET:
                per = row.extra["overhead_ms_per_partition"]
                out.targets.append(
                    Target(
                        "dagster",
                        f"range run overhead <= {TARGET_MS_PER_PARTITION:.0f} ms per partition, "
                        f"{partitions} partitions, {storage} instance",
                        f"{per:.1f} ms",
                        per <= TARGET_MS_PER_PARTITION,
                    )
                )
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, nargs="+", default=[250, 1000])
    parser.add_argument("--storage", nargs="+", choices=STORAGES, default=list(STORAGES))
    parser.add_argument("--pg-url", default=PG_ADMIN_URL)
    parser.add_argument("--repeat", type=int, default=1, help="interleaved repetitions")
    args = parser.parse_args(argv)
    for _ in range(args.repeat):
        for partitions in args.partitions:
            for storage in args.storage:
                row = range_case(partitions, storage, args.pg_url)
                print(json.dumps({"case": row.case, "wall": round(row.seconds, 2), **row.extra}))


if __name__ == "__main__":
    main()
