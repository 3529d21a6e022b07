"""4. Dagster overhead: N one-partition runs vs one N-partition range run, persisted instance.

The demo source (offline, 50 stocks) keeps the data work small, so what is left is the cost
of a run: launching, event storage in the SQLite instance, resources, one transaction.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import dagster as dg

from benchmarks.common import Outcome, Row
from benchmarks.dagster_defs import build_defs, materialization_metadata, temp_instance
from benchmarks.sizes import Size
from stocksync_dagster.defs.market.jobs import RANGE_END_TAG, RANGE_START_TAG
from stocksync_dagster.resources import DemoSourceResource

DEMO_STOCKS = 50


def _materialize(
    defs: dg.Definitions, instance: dg.DagsterInstance, first: str, last: str
) -> dg.ExecuteInProcessResult:
    result = dg.materialize(
        [a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition)],
        selection=["daily_bars"],
        instance=instance,
        resources=defs.resources,
        tags={RANGE_START_TAG: first, RANGE_END_TAG: last},
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        raise_on_error=False,
    )
    if not result.success:
        raise RuntimeError(f"daily_bars {first}..{last} failed")
    return result


def run(size: Size) -> Outcome:
    n = size.dagster_partitions
    out = Outcome(params={"partitions": n, "demo_stocks": DEMO_STOCKS})
    with tempfile.TemporaryDirectory(prefix="stocksync_bench_") as tmp:
        url = f"sqlite:///{Path(tmp) / 'warehouse.db'}"
        defs = build_defs(DemoSourceResource(stocks=DEMO_STOCKS), url)
        keys = defs.resolve_assets_def("daily_bars").partitions_def.get_partition_keys()  # type: ignore[union-attr]
        keys = [k for k in keys if k >= size.start.isoformat()][:n]
        with temp_instance() as instance:
            began = time.perf_counter()
            rows = 0
            for key in keys:
                result = _materialize(defs, instance, key, key)
                rows += int(materialization_metadata(result, "daily_bars")["run_rows_fetched"])
            single = time.perf_counter() - began
        with temp_instance() as instance:
            began = time.perf_counter()
            result = _materialize(defs, instance, keys[0], keys[-1])
            ranged = time.perf_counter() - began
            range_rows = int(materialization_metadata(result, "daily_bars")["run_rows_fetched"])
    out.rows += [
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
    return out
